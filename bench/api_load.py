#!/usr/bin/env python3
"""Load on the API's paginated read endpoints over a 100,000-resource inventory.

    python bench/api_load.py [--resources 100000] [--clients 50] [--seconds 30] [--workers 1]
                             [--driver auto|wrk|httpx] [--no-read-cache]

Fills a scratch PostgreSQL database (bench/stored_evaluation.py's generator, then one
evaluation for the opportunities, then ANALYZE, as autovacuum would soon after), starts
`finops serve --workers N` as its own processes, and drives it on loopback with `--clients`
concurrent keep-alive clients: wrk when it is on PATH (a C load generator, its own
process: `apt-get install wrk`), else httpx on asyncio in this process. The mix: first
pages, and clients walking the lists page by page with the keyset cursor (load_drivers.py).
Prints the driver, then requests per second and p50/p99 latency per endpoint and overall,
and how the answers were made (X-Finops-Read-Cache: hit, shared, miss; `--no-read-cache`
serves with FINOPS_API_READ_CACHE=false, every answer from the routes).

With wrk, the per-endpoint figures are each request's own time, measured by the script;
the overall line is wrk's histogram, which corrects for coordinated omission: for every
answer slower than the mean interval between a client's requests, it adds the samples an
open-loop client would have seen queued behind it. That line is the stricter of the two.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_drivers import Endpoint, Result, run_httpx, run_wrk, wrk_path  # noqa: E402
from stored_evaluation import FILL, LISTED, METRICS, _twenty_policies  # noqa: E402

from tests.support.servers import free_port, wait_http  # noqa: E402

INVENTORY = "/api/v1/inventory?limit=50"
BY_COST = "/api/v1/inventory?kind=ec2&sort=-monthly_cost&limit=50"
OPPORTUNITIES = "/api/v1/opportunities?limit=50"
ENDPOINTS = [
    Endpoint("inventory, first page", INVENTORY),
    Endpoint("inventory, walking pages", INVENTORY, walk=True),
    Endpoint("inventory ec2 by cost, first page", BY_COST),
    Endpoint("inventory ec2 by cost, walking", BY_COST, walk=True),
    Endpoint("opportunities, first page", OPPORTUNITIES),
    Endpoint("opportunities, walking pages", OPPORTUNITIES, walk=True),
    Endpoint("actions, first page", "/api/v1/actions?limit=50"),
]


def prepare(admin_url: str, count: int) -> tuple[str, str]:
    """A filled scratch database and a viewer's token for it."""
    name = f"finops_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    os.environ["DATABASE_URL"] = url
    from backend.api.accounts import create_user, issue_token
    from backend.api.security import Role
    from backend.core import migrations
    from backend.core.automation_audit_logger import AuditLogger
    from backend.core.database import session_scope
    from backend.core.policy_evaluator import StoredPolicyEvaluator
    from backend.domain.policy import load_pack

    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, {"n": count})
        conn.execute(METRICS.replace("%%", "%"))
        conn.execute(LISTED)
        conn.execute("VACUUM ANALYZE")
    with session_scope(url) as session:
        StoredPolicyEvaluator(session).run(_twenty_policies(load_pack))
    with psycopg.connect(url, autocommit=True) as conn:
        # Statistics for what the evaluation wrote (autovacuum's job, a minute later): with
        # those of the empty table, the planner sorted every open opportunity for each page
        # (145 ms at 100,000 resources) instead of reading the primary key backwards (0.4 ms).
        conn.execute("ANALYZE")
    audit = AuditLogger()
    with session_scope(url) as session:
        create_user(session, "load", Role.VIEWER, actor="bench", audit=audit)
        token = issue_token(
            session, "load", actor="bench", audit=audit, expires_in=dt.timedelta(hours=2)
        ).token
    return url, token


def report(result: Result, clients: int, workers: int, resources: int) -> None:
    print(f"driver: {result.driver}")
    print(
        f"{resources} resources, {clients} clients, {workers} server worker(s), "
        f"{result.seconds:.0f} s:"
    )
    for line in result.lines:
        rate = line.requests / result.seconds
        print(
            f"{line.name:36} {rate:7.1f} req/s  p50 {line.p50_ms:7.1f} ms"
            f"  p99 {line.p99_ms:7.1f} ms"
        )
    if result.sources:
        answered = sum(result.sources.values())
        shares = ", ".join(
            f"{label} {count / answered:.1%}" for label, count in sorted(result.sources.items())
        )
        print(f"answered from (X-Finops-Read-Cache): {shares}")
    if result.failures:
        print(f"{result.failures} answers were not 200 (or the connection failed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--resources", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1, help="finops serve --workers")
    ap.add_argument("--driver", choices=["auto", "wrk", "httpx"], default="auto")
    ap.add_argument("--no-read-cache", action="store_true", help="FINOPS_API_READ_CACHE=false")
    ap.add_argument(
        "--url",
        default=os.environ.get(
            "FINOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = ap.parse_args()
    use_wrk = args.driver == "wrk" or (args.driver == "auto" and wrk_path() is not None)
    if use_wrk and wrk_path() is None:
        ap.error("wrk is not on PATH (apt-get install wrk), or use --driver httpx")
    url, token = prepare(args.url, args.resources)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FINOPS_SECRET_KEY": secrets.token_urlsafe(32),
        "FINOPS_ENVIRONMENT": "production",
        "FINOPS_LOG_LEVEL": "WARNING",
        "FINOPS_API_READ_CACHE": "false" if args.no_read_cache else "true",
    }
    finops = str(Path(sys.executable).with_name("finops"))
    command = [finops, "serve", "--port", str(port), "--workers", str(args.workers)]
    server = subprocess.Popen(command, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/live")
        run_httpx(base, token, ENDPOINTS, 5, 3.0)  # warm-up: every worker's pool and caches
        drive = run_wrk if use_wrk else run_httpx
        result = drive(base, token, ENDPOINTS, args.clients, args.seconds)
        report(result, args.clients, args.workers, args.resources)
    finally:
        server.terminate()
        server.wait(30)
        from backend.core.database import dispose_engines

        dispose_engines()
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
