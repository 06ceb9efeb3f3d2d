"""`finops serve` as a real process (uvicorn) over HTTP, and `finops users ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner, Result

from backend.cli.app import app
from backend.config import reset_settings_cache
from tests.support.servers import free_port, wait_http

FINOPS = Path(sys.executable).with_name("finops")


@pytest.fixture
def sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'serve.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings_cache()
    return url


def cli(*args: str) -> Result:
    from backend.cli import serve, users  # noqa: F401 - registers the commands

    return CliRunner().invoke(app, list(args))


def http(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def operator_token() -> str:
    assert cli("users", "create", "otto", "--role", "operator").exit_code == 0
    return cli("users", "token", "otto").stdout.strip().splitlines()[0]


@contextmanager
def served(database: str, tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, Path]]:
    """`finops serve --port P *args` in production mode: (its base URL, its log) while the
    block runs; then stopped, and checked to have stopped cleanly, with no traceback."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database,
        "FINOPS_ENVIRONMENT": "production",
        "FINOPS_SECRET_KEY": "a-long-random-test-secret-value",
        **env,
    }
    log = tmp_path / "serve.log"  # a file, not a pipe: a full pipe would block the server
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [str(FINOPS), "serve", "--port", str(port), *args],
            env=environment,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/live", timeout=60)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    output = log.read_text()
    assert proc.returncode in (0, -15), output
    assert "Traceback" not in output


def test_users_commands_create_issue_list_and_revoke(sqlite: str) -> None:
    assert cli("users", "create", "carol", "--role", "approver").exit_code == 0
    bad_role = cli("users", "create", "dave", "--role", "boss")
    assert bad_role.exit_code == 2 and "administrator" in bad_role.output
    assert cli("users", "create", "carol", "--role", "viewer").exit_code == 2
    issued = cli("users", "token", "carol", "--expires-days", "3")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[0]
    assert token.startswith("fo_") and len(token) > 40
    assert "shown once" in issued.stderr
    listed = cli("users", "list")
    assert "carol" in listed.output and "approver" in listed.output
    assert token not in listed.output and "working" in listed.output
    assert cli("users", "token", "nobody").exit_code == 2
    revoked = cli("users", "revoke", "1")
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "revoked" in cli("users", "list").output
    assert cli("users", "revoke", "99").exit_code == 2


def test_serve_refuses_the_default_secret_outside_development(
    sqlite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_ENVIRONMENT", "production")
    reset_settings_cache()
    refused = cli("serve", "--port", str(free_port()))
    assert refused.exit_code == 2
    assert "FINOPS_SECRET_KEY" in refused.output


def test_serve_answers_health_and_api_over_http(sqlite: str, tmp_path: Path) -> None:
    token = operator_token()
    with served(sqlite, tmp_path, "--host", "127.0.0.1") as (base, log):
        assert http(f"{base}/health/live") == (200, {"status": "alive"})
        status, ready = http(f"{base}/health/ready")
        assert status == 200, ready
        assert ready["checks"]["database"]["status"] == "pass"
        assert http(f"{base}/api/v1/auth/me", token)[1]["username"] == "otto"
        status, problem = http(f"{base}/api/v1/users", token)
        assert (status, problem["status"]) == (403, 403)
    assert base.removeprefix("http://") in log.read_text()


def test_serve_with_workers_reports_the_sum_of_every_workers_counters(
    sqlite: str, tmp_path: Path
) -> None:
    token = operator_token()
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"a previous run's")  # wiped before workers start
    workers = ("--workers", "2")
    with served(sqlite, tmp_path, *workers, PROMETHEUS_MULTIPROC_DIR=str(shared)) as (base, _):
        deadline = time.monotonic() + 30
        while len(list(shared.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # each worker writes its file as it builds its app
        assert len(list(shared.glob("counter_*.db"))) == 2, list(shared.iterdir())
        for _ in range(30):  # a connection each: the workers share them out
            assert http(f"{base}/api/v1/auth/me", token)[0] == 200
        for _ in range(6):  # whichever worker answers, the count is every worker's
            text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            me = [
                s.value
                for s in families["finops_api_requests"].samples
                if s.labels.get("route") == "/api/v1/auth/me" and s.name.endswith("_total")
            ]
            assert me == [30.0], me
            assert "process_cpu_seconds" not in families  # one worker's: left out
            assert "finops_automation_engine_status" in families  # the database's: still read
