#!/usr/bin/env python3
"""Benchmark: evaluate 20 policies over 1,000,000 stored resources in PostgreSQL.

    python bench/stored_evaluation.py [--resources 1000000] [--url postgresql://...]

Creates a scratch database, fills it inside PostgreSQL (generate_series: a realistic mix of
kinds, tags, states and metric summaries), then times StoredPolicyEvaluator over the default
pack plus the reference pack (20 policies), opportunities written and committed. Prints the
wall time, the time per policy and whether it ran as SQL, and the peak memory of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILL = """
INSERT INTO resources (account_id, region, kind, resource_id, state, tags, attributes,
                       created_at, state_changed_at, monthly_cost, first_seen, last_seen)
SELECT acct, region, kind, rid, state, tags, attrs, created, changed, cost, now(), now()
FROM (
  SELECT g,
    -- a block of 100 ids shares one account and region, so relations (snapshot -> volume,
    -- AMI -> snapshot) point inside the block
    lpad((100000000000 + (g / 100) %% 20)::text, 12, '0') AS acct,
    (ARRAY['us-east-1','us-west-2','eu-west-1','eu-central-1'])[1 + (g / 100) %% 4] AS region,
    CASE WHEN g %% 100 < 50 THEN 'ec2' WHEN g %% 100 < 75 THEN 'ebs'
         WHEN g %% 100 < 85 THEN 'ebs-snapshot' WHEN g %% 100 < 90 THEN 'elastic-ip'
         WHEN g %% 100 < 94 THEN 'elb' WHEN g %% 100 < 98 THEN 'rds' ELSE 'ami' END AS kind,
    'r-' || g AS rid,
    (ARRAY['prod','prod','dev','staging','test'])[1 + (g / 7) %% 5] AS env,
    now() - ((g %% 400) || ' days')::interval AS created,
    now() - ((g %% 90) || ' days')::interval AS changed,
    ((g %% 97) + 1) * 1.5 AS cost
  FROM generate_series(1, %(n)s) AS g
) base
CROSS JOIN LATERAL (SELECT
  CASE kind WHEN 'ec2' THEN (CASE WHEN g %% 10 = 0 THEN 'stopped' ELSE 'running' END)
            WHEN 'ebs' THEN (CASE WHEN g %% 13 = 0 THEN 'available' ELSE 'in-use' END)
            WHEN 'elastic-ip' THEN (CASE WHEN g %% 31 = 0 THEN 'unassociated' ELSE 'associated' END)
            WHEN 'elb' THEN 'active' WHEN 'rds' THEN 'available' ELSE 'completed' END AS state,
  jsonb_strip_nulls(jsonb_build_object('env', env, 'owner', 'team-' || (g %% 9),
      'finops:opt-out', CASE WHEN g %% 20 = 0 THEN 'true' END,
      'finops:schedule', CASE WHEN g %% 11 = 0 THEN 'office-hours' END)) AS tags,
  CASE kind
    WHEN 'ec2' THEN jsonb_build_object('InstanceType',
        (ARRAY['m5.large','t3.medium','c5.xlarge','m6i.large','t3.large','m5.xlarge','c5.large',
               'r5.large','t2.medium','m4.large'])[1 + g %% 10],
        'State', jsonb_build_object('Name', CASE WHEN g %% 10 = 0 THEN 'stopped' ELSE 'running' END))
    WHEN 'ebs' THEN jsonb_build_object('VolumeType',
        (ARRAY['gp2','gp3','gp3','gp3','io1','gp3','gp3','gp2','gp3','st1'])[1 + (g / 100) %% 10],
        'Size', 8 * (1 + g %% 50), 'State', CASE WHEN g %% 13 = 0 THEN 'available' ELSE 'in-use' END,
        'Attachments', CASE WHEN g %% 13 = 0 THEN '[]'::jsonb
                       ELSE jsonb_build_array(jsonb_build_object('InstanceId', 'r-' || (g - 1))) END)
    WHEN 'ebs-snapshot' THEN jsonb_build_object('VolumeId', CASE WHEN g %% 10 = 0 THEN 'vol-gone-' || g
        ELSE 'r-' || (g - (g %% 100) + 50 + g %% 25) END,
        'VolumeSize', 20, 'OwnerId', lpad((100000000000 + (g / 100) %% 20)::text, 12, '0'))
    WHEN 'elastic-ip' THEN jsonb_strip_nulls(jsonb_build_object('AllocationId', 'eipalloc-' || g,
        'AssociationId', CASE WHEN g %% 31 <> 0 THEN 'eipassoc-' || g END))
    WHEN 'elb' THEN jsonb_build_object('Type', CASE WHEN g %% 5 = 0 THEN 'network' ELSE 'application' END)
    WHEN 'rds' THEN jsonb_build_object('DBInstanceClass', 'db.t3.medium', 'Engine', 'mysql',
        'AllocatedStorage', 20, 'MultiAZ', false, 'StorageType', 'gp2')
    ELSE jsonb_build_object('BlockDeviceMappings', jsonb_build_array(jsonb_build_object(
        'Ebs', jsonb_build_object('SnapshotId', 'r-' || (g - 15)))))
  END AS attrs) detail
"""
METRICS = """
INSERT INTO metric_summaries (resource_pk, namespace, metric, statistic, days, value, collected_at)
SELECT id, ns, metric, stat, days,
       CASE WHEN id %% 53 = 0 THEN NULL WHEN id %% 17 = 0 THEN (id %% 5)::float
            WHEN ns = 'AWS/ApplicationELB' THEN 1000 * (20 + id %% 70)::float
            ELSE 20 + (id %% 70)::float END, now()
FROM resources
CROSS JOIN LATERAL (VALUES
  ('ec2', 'AWS/EC2', 'CPUUtilization', 'Average', 14),
  ('ec2', 'AWS/EC2', 'CPUUtilization', 'Maximum', 14),
  ('elb', 'AWS/ApplicationELB', 'RequestCount', 'Sum', 7),
  ('rds', 'AWS/RDS', 'DatabaseConnections', 'Maximum', 7)) AS m(k, ns, metric, stat, days)
WHERE resources.kind = m.k AND resources.state IN ('running', 'active', 'available')
"""

# What a scan that listed every region whole records (migration 0006): without it the
# snapshot relations are unknown and select nothing.
LISTED = """
WITH scan AS (
  INSERT INTO scan_runs (started_at, finished_at, status, accounts, regions, counts, failures)
  VALUES (now(), now(), 'complete', '{}', '{}', '{}', '{}') RETURNING id)
INSERT INTO inventory_parts (account_id, region, kind, scan_id, completed_at)
SELECT pairs.account_id, pairs.region, kinds.kind, (SELECT id FROM scan), now()
FROM (SELECT DISTINCT account_id, region FROM resources) AS pairs
CROSS JOIN (VALUES ('ebs'), ('ami')) AS kinds(kind)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument(
        "--url",
        default=os.environ.get(
            "FINOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    ap.add_argument(
        "--reuse",
        metavar="NAME",
        help="evaluate in this kept database (opportunities emptied first) instead of filling one",
    )
    ap.add_argument("--runs", type=int, default=2, help="evaluations: a first, then re-runs")
    args = ap.parse_args()
    name = args.reuse or f"finops_bench_{uuid.uuid4().hex[:8]}"
    if not args.reuse:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = args.url.rsplit("/", 1)[0] + "/" + name
    os.environ["DATABASE_URL"] = url
    try:
        run(url, args.resources, args.runs, fill=not args.reuse)
    finally:
        from backend.core.database import dispose_engines

        dispose_engines()
        if args.keep or args.reuse:
            print(f"kept database {name}")
        else:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, count: int, runs: int, *, fill: bool) -> None:
    from sqlalchemy import text

    from backend.core import migrations
    from backend.core.database import session_scope
    from backend.core.policy_evaluator import StoredPolicyEvaluator
    from backend.domain.policy import load_pack

    migrations.upgrade(url)
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        if fill:
            conn.execute(FILL, {"n": count})
            conn.execute(METRICS.replace("%%", "%"))
            conn.execute(LISTED)
        else:  # a first run again: no opportunity known yet
            conn.execute("TRUNCATE opportunities CASCADE")
        conn.execute("VACUUM ANALYZE")
        total = conn.execute("SELECT count(*) FROM resources").fetchone()
        metrics = conn.execute("SELECT count(*) FROM metric_summaries").fetchone()
        print(
            f"{'filled' if fill else 'reused'} {total[0] if total else 0} resources, "
            f"{metrics[0] if metrics else 0} metric summaries in {time.perf_counter() - t:.1f}s"
        )
        yardstick = _yardstick(conn)
    print(
        f"yardstick, one predicate over the table (the issue's scale: 0.15 - 0.3 s for a "
        f"million rows): {yardstick:.2f}s"
    )
    pack = _twenty_policies(load_pack)
    for i in range(runs):
        label = "first run (all new)" if i == 0 else f"re-run {i} (all known)"
        busy = _busy_cpu_seconds()
        t = time.perf_counter()
        with session_scope(url) as session:
            backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            evaluator = StoredPolicyEvaluator(session)
            outcome = evaluator.run(pack)
        wall = time.perf_counter() - t
        busy = _busy_cpu_seconds() - busy if busy is not None else None
        matched = sum(o.matched for o in outcome.outcomes)
        print(
            f"{label}: {len(pack.policies)} policies, {matched} opportunities, "
            f"{wall:.2f}s wall (committed); server backend peak {_peak_mb(backend)}"
        )
        if busy is not None:
            print(f"  the machine's busy CPU time meanwhile: {busy:.1f}s (all processes)")
        steps = {**outcome.seconds_by_step, **evaluator.timings}
        print("  " + ", ".join(f"{step} {seconds:.2f}s" for step, seconds in steps.items()))
    for o in outcome.outcomes:
        print(f"  {o.policy:32} {o.engine:6} {o.matched:8}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak_mb:.0f} MB")


def _yardstick(conn: Any) -> float:
    """The issue's measure of a machine: one SQL predicate over the table (best of three)."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        conn.execute(
            "SELECT count(*) FROM resources WHERE attributes->>'InstanceType' = 'm5.large'"
        )
        times.append(time.perf_counter() - t)
    return min(times)


def _busy_cpu_seconds() -> float | None:
    """Seconds every CPU of the machine spent busy so far (Linux's /proc/stat), else None:
    with the evaluation's wall time it says how much of the machine the evaluation used."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _peak_mb(pid: int) -> str:
    """Peak resident memory of a local PostgreSQL backend (shared buffers it touched
    included, its parallel workers not), or "unknown" when /proc does not say."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "unknown"
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), None)
    return f"{int(kb) / 1024:.0f} MB" if kb else "unknown"


def _twenty_policies(load_pack: Callable[[list[Path]], Any]) -> Any:
    """The default pack (13) and the reference pack (8, renamed): 21, less one duplicate."""
    import tempfile

    reference = (ROOT / "bench" / "reference-pack.yml").read_text()
    for line in [ln for ln in reference.splitlines() if ln.strip().startswith("- name:")]:
        reference = reference.replace(line, line + "-ref", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.yml"
        path.write_text(reference)
        pack = load_pack([ROOT / "policies", path])
    from backend.domain.policy.model import PolicyPack

    return PolicyPack(tuple(pack.policies[:20]))


if __name__ == "__main__":
    main()
