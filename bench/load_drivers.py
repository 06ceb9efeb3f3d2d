"""The load generators of bench/api_load.py: wrk (C, its own process) when it is on PATH,
else httpx clients on asyncio in this process (which then shares the CPU with the server).

Both drive the same endpoints, each client choosing one at random for every request. An
endpoint that walks follows `next_cursor` from page to page, per client, back to the first
page after the last; the others ask for their first page each time.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LUA = Path(__file__).with_name("api_load.lua")


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # with a query string, so that "&cursor=..." can follow
    walk: bool = False


@dataclass(frozen=True)
class Line:
    name: str
    requests: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Result:
    driver: str
    seconds: float
    lines: list[Line]  # one per endpoint, then "all"
    failures: int  # answers other than 200, and connection errors
    sources: dict[str, int] = field(default_factory=dict)  # X-Finops-Read-Cache -> answers


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    base: str, token: str, endpoints: list[Endpoint], clients: int, seconds: float
) -> Result:
    wrk = wrk_path()
    assert wrk is not None
    duration = max(1, round(seconds))
    args = [wrk, "-t", str(clients), "-c", str(clients), "-d", f"{duration}s"]
    args += ["--timeout", "10s", "-s", str(LUA), base, "--", token]
    for e in endpoints:
        args += [e.name, e.path, "1" if e.walk else "0"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    lines: dict[str, Line] = {}
    failures = 0
    sources: dict[str, int] = {}
    for row in out.splitlines():
        if row.startswith("FINOPS_CACHE\t"):
            _, label, count = row.split("\t")
            sources[label] = int(count)
        elif row.startswith("FINOPS\t"):
            _, name, requests, p50, p99, bad = row.split("\t")
            lines[name] = Line(name, int(requests), float(p50), float(p99))
            if name == "all":
                failures = int(bad)
    ordered = [lines[e.name] for e in endpoints if e.name in lines] + [lines["all"]]
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    label = (version.split() or ["wrk"])[:2]
    driver = f"{' '.join(label)} ({clients} threads, one connection each)"
    return Result(driver, float(duration), ordered, failures, sources)


def run_httpx(
    base: str, token: str, endpoints: list[Endpoint], clients: int, seconds: float
) -> Result:
    latencies, failures = asyncio.run(_drive(base, token, endpoints, clients, seconds))
    lines = [_line(e.name, latencies[e.name]) for e in endpoints]
    lines.append(_line("all", [v for e in endpoints for v in latencies[e.name]]))
    return Result("httpx on asyncio, in the benchmark's process", seconds, lines, failures)


async def _drive(
    base: str, token: str, endpoints: list[Endpoint], clients: int, seconds: float
) -> tuple[dict[str, list[float]], int]:
    latencies: dict[str, list[float]] = {e.name: [] for e in endpoints}
    failures = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def one_client(seed: int) -> None:
            nonlocal failures
            rng = random.Random(seed)
            cursors: dict[str, str] = {}  # this client's place in each list it walks
            while time.perf_counter() < deadline:
                endpoint = rng.choice(endpoints)
                path = endpoint.path
                if endpoint.name in cursors:
                    path += f"&cursor={cursors[endpoint.name]}"
                started = time.perf_counter()
                response = await client.get(path)
                latencies[endpoint.name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1
                    continue
                if endpoint.walk:
                    cursors.pop(endpoint.name, None)
                    following = response.json().get("next_cursor")
                    if following:
                        cursors[endpoint.name] = following

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, failures


def _line(name: str, values: list[float]) -> Line:
    ordered = sorted(values) or [0.0]
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return Line(name, len(values), p50, p99)
