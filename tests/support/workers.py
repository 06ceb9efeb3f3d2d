"""Real Celery worker processes for the runtime tests (`finops worker`), and a Redis database
of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

# One Redis database per pytest-xdist worker (gw0 -> 11, gw1 -> 12): runtime tests running
# side by side would otherwise flush, and consume, each other's queues.
_XDIST = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
RUNTIME_REDIS_URL = os.environ.get(
    "FINOPS_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{11 + _XDIST % 2}"
)
FINOPS = str(Path(sys.executable).with_name("finops"))


def redis_available(url: str = RUNTIME_REDIS_URL) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Workers:
    """Worker processes started with the test's environment; killed at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(
        self, *, queues: str = "scans,actions,notifications", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.started += 1
        log = (self.log_dir / f"worker-{self.started}.log").open("wb")
        proc = subprocess.Popen(
            [FINOPS, "worker", "--pool", "solo", "-Q", queues, "-n", f"w{self.started}@%h"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no shutdown, no acknowledgement, like a node lost."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop_all(self) -> None:
        for proc in self.alive():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(proc)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.log_dir.glob("*.log"))


@contextmanager
def workers(log_dir: Path, count: int) -> Iterator[Workers]:
    pool = Workers(log_dir)
    try:
        for _ in range(count):
            pool.start()
        yield pool
    finally:
        pool.stop_all()


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis_available(url), 10, "a private redis-server")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
