#!/usr/bin/env python3
"""Load on the API's paginated read endpoints over a 100,000-resource inventory.

    python bench/api_load.py [--resources 100000] [--clients 50] [--seconds 30]

Fills a scratch PostgreSQL database (bench/stored_evaluation.py's generator, then one
evaluation for the opportunities), starts `finops serve` as its own process, and drives it
from this process with `--clients` concurrent keep-alive clients (httpx, asyncio) on
loopback. Prints requests per second and p50/p99 latency, per endpoint and overall.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stored_evaluation import FILL, METRICS, _twenty_policies  # noqa: E402

from tests.support.servers import free_port, wait_http  # noqa: E402

ENDPOINTS = {
    "inventory page": "/api/v1/inventory?limit=50&offset={offset}",
    "inventory by kind, cost sort": "/api/v1/inventory?kind=ec2&sort=-monthly_cost&limit=50",
    "opportunities page": "/api/v1/opportunities?limit=50&offset={offset}",
    "actions page": "/api/v1/actions?limit=50",
}


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
        conn.execute("VACUUM ANALYZE")
    with session_scope(url) as session:
        StoredPolicyEvaluator(session).run(_twenty_policies(load_pack))
    audit = AuditLogger()
    with session_scope(url) as session:
        create_user(session, "load", Role.VIEWER, actor="bench", audit=audit)
        token = issue_token(
            session, "load", actor="bench", audit=audit, expires_in=dt.timedelta(hours=2)
        ).token
    return url, token


async def drive(base: str, token: str, clients: int, seconds: float) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                name = rng.choice(list(ENDPOINTS))
                path = ENDPOINTS[name].format(offset=rng.randrange(0, 20_000, 50))
                started = time.perf_counter()
                response = await client.get(path)
                latencies[name].append(time.perf_counter() - started)
                errors += response.status_code != 200

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    if errors:
        print(f"{errors} responses were not 200")
    return latencies


def report(latencies: dict[str, list[float]], seconds: float) -> None:
    def line(name: str, values: list[float]) -> str:
        ordered = sorted(values)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        return f"{name:32} {len(values) / seconds:7.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"

    for name, values in latencies.items():
        print(line(name, values))
    print(line("all", [v for values in latencies.values() for v in values]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--url",
        default=os.environ.get(
            "FINOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = ap.parse_args()
    url, token = prepare(args.url, args.resources)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FINOPS_SECRET_KEY": secrets.token_urlsafe(32),
        "FINOPS_ENVIRONMENT": "production",
        "FINOPS_LOG_LEVEL": "WARNING",
    }
    finops = str(Path(sys.executable).with_name("finops"))
    server = subprocess.Popen([finops, "serve", "--port", str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/live")
        asyncio.run(drive(base, token, 5, 3.0))  # warm-up
        latencies = asyncio.run(drive(base, token, args.clients, args.seconds))
        print(f"{args.resources} resources, {args.clients} clients, {args.seconds:.0f} s:")
        report(latencies, args.seconds)
    finally:
        server.terminate()
        server.wait(30)
        from backend.core.database import dispose_engines

        dispose_engines()
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
