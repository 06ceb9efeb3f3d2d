"""Every application command of the on-call runbook, run as written against a local deployment.

The commands come from ../shared/spec/automation-failure-response.md (the interface contract)
and from docs/runbooks/*.md (this project's runbooks): each `kubectl exec ... -- COMMAND` whose
COMMAND is `python -c ...`, `python scripts/...`, `finops ...`, `aws ...` or `sh -c ...`, with
the `kubectl exec` prefix taken off, and the runbook's `curl` checks of the API. They run in a
shell the way a pod runs them (the image's working directory holds scripts/), against:
PostgreSQL (a scratch database), Redis (database 10), a moto_server for AWS, a real
`finops worker` and `finops serve`. Each must exit 0 and print what it is for; placeholders
(ACTION_ID, RUN_ID, ...) get values from data seeded through the real scan, plan and execution.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.servers import (
    free_port,
    postgres_available,
    reset_moto,
    scratch_postgres_database,
    wait_http,
)
from tests.support.workers import wait_until

pytestmark = [pytest.mark.moto_server, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
# The user's runbook: ../shared/spec when this checkout sits beside it, else the verbatim copy
# kept in docs/runbooks/spec (a test below keeps the two identical).
SHARED_SPEC = ROOT.parent / "shared" / "spec" / "automation-failure-response.md"
VENDORED_SPEC = ROOT / "docs" / "runbooks" / "spec" / "automation-failure-response.md"
SPEC = SHARED_SPEC if SHARED_SPEC.exists() else VENDORED_SPEC
DOCS = ROOT / "docs" / "runbooks"
BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/10"
NAMESPACE = "finops-automation"
APP_DEPLOYMENTS = ("finops-api", "finops-worker", "finops-scheduler")
ROLE_ARN = "arn:aws:iam::123456789012:role/finops-cost-optimization"
# The API as the runbooks reach it: the production Ingress, or a `kubectl port-forward`.
API_HOSTS = ("https://api.finops.example.com", "http://localhost:8000")
PROMETHEUS_QUERY = re.compile(r"https://monitoring\.[\w.]+/api/v1/query\?query=(?P<metric>\w+)")
APPLICATION = re.compile(r"^(python3? (-c |scripts/)|scripts/|finops |aws |sh -c )")
KUBECTL_EXEC = re.compile(r"^kubectl exec\b(?P<options>.*?)\s--\s+(?P<command>.+)$")


@dataclass(frozen=True)
class Command:
    """One command of a runbook: where it is written, where it runs, and its text."""

    source: str  # file:line
    deployment: str | None  # where `kubectl exec` runs it; None for a local command
    text: str


def shell_commands(markdown: str) -> Iterator[tuple[int, str]]:
    """(line, command) of every command in the ```bash blocks, continuation lines joined."""
    in_fence = is_shell = False
    pending: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence, is_shell = not in_fence, stripped[3:].strip() in ("bash", "sh", "shell")
            continue
        if not (in_fence and is_shell) or (not pending and stripped.startswith("#")):
            continue
        if not pending:
            if not stripped:
                continue
            start = number
        pending.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            yield start, " ".join(pending)
            pending = []


def parse(source: str, line: int, text: str) -> Command:
    found = KUBECTL_EXEC.match(text)
    if not found:
        return Command(f"{source}:{line}", None, text)
    options = found["options"]
    deployment = re.search(r"deployment/([\w-]+)", options)
    namespace = re.search(r"(?:-n|--namespace)[ =]([\w-]+)", options)
    assert namespace and namespace[1] == NAMESPACE, f"{source}:{line}: namespace of {text!r}"
    return Command(f"{source}:{line}", deployment[1] if deployment else None, found["command"])


def runbook_commands(path: Path, label: str) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    return [parse(label, line, command) for line, command in shell_commands(text)]


def runbooks() -> list[tuple[Path, str]]:
    found = [(SPEC, "spec")] if SPEC.exists() else []
    return found + [(p, f"docs/runbooks/{p.name}") for p in sorted(DOCS.glob("*.md"))]


def to_run() -> list[Command]:
    """The application commands and the API checks, each text once, in the runbooks' order."""
    seen: set[str] = set()
    picked: list[Command] = []
    for path, label in runbooks():
        for command in runbook_commands(path, label):
            runs_here = (
                command.deployment in APP_DEPLOYMENTS and APPLICATION.match(command.text)
            ) or (command.deployment is None and command.text.startswith("curl "))
            if runs_here and command.text not in seen:
                seen.add(command.text)
                picked.append(command)
    return picked


# What each kind of command must print: (a regex over the command, a regex over its output).
EXPECTED: list[tuple[str, str]] = [
    (r"SafetyChecker\(\)\.system_status", re.escape("safety system: ACTIVE")),
    (r"get_active_actions", re.escape("active action(s)")),
    (r"get_db\(\)", re.escape("DB OK")),
    (r"get_recent_actions", re.escape("action event(s) in the last 1h")),
    (r"emergency-resource-check\.py", re.escape("action(s) executed in the last")),
    (r"\.emergency_stop\(\)|finops emergency-stop", re.escape("EMERGENCY STOP ENGAGED")),
    (r"send_emergency_alert", re.escape("emergency alert: ")),
    (r"health-check\.py --exit-code", re.escape("ok   workers:")),
    (r"health-check\.py --json", re.escape('"healthy": true')),
    (r"test_safe_action", re.escape("PASS dry-run:")),
    (r"get_failed_actions", re.escape("1 failed action(s) in the last 24h")),
    (r"retry_action|actions retry", re.escape("safety, on a fresh describe:")),
    (r"validate_all_policies", re.escape("policy pack OK")),
    (r"get_status\(\)", re.escape("automation engine: RUNNING")),
    (r"run_full_check", re.escape(", 0 failed")),
    (r"test_all_channels", re.escape("log ok")),
    (r"test-optimization-action\.py", re.escape("RESULT: PASS")),
    (r"test_logging", re.escape("audit logging OK")),
    (r"aws sts get-caller-identity", re.escape("123456789012")),
    (r"aws ec2 describe-instances", re.escape("Reservations")),
    (r"aws sts assume-role", re.escape("SessionToken")),
    (r"pg_locks", re.escape("no lock waits")),
    (r"flushdb", re.escape("FLUSHDB done")),
    (r"finops resume", re.escape("running")),
    (r"finops actions rollback", re.escape("rolled_back")),
    (r"finops audit verify", re.escape("audit chain OK")),
    (r"health/ready", re.escape('"status":"ready"')),
    (r"/metrics \|", re.escape("finops_workers_alive 1.0")),
    (r"finops actions list --state blocked", re.escape("tagged env=Prod")),
    (r"finops actions list --state succeeded", re.escape("succeeded")),
    (r"finops audit timeline", re.escape("safety_verdict")),
    (r"finops policy list", re.escape("stop-idle")),
    (r"finops policy disable", re.escape("disabled")),
    (r"finops policy enable", re.escape("enabled")),
    (r"finops db current", r"database (\w+), code \1"),
    (r"finops db upgrade", re.escape("at revision")),
    (r"finops rollback-watch --once", re.escape("rollback trigger")),
    (r"pg_stat_activity", re.escape("no query running longer than 5 s")),
]
ENGAGES_THE_STOP = re.compile(r"\.emergency_stop\(|finops emergency-stop ")


@dataclass
class Deployment:
    env: dict[str, str]
    api: str
    ids: dict[str, str] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            env=self.env,
            cwd=ROOT,  # like the image's /app: scripts/ is there
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def fill(self, command: str) -> str:
        """The runbook's placeholders, with values from the seeded data."""
        action = self.ids["succeeded"] if "rollback" in command else self.ids["failed"]
        values = {
            "ACTION_ID": action,
            "RUN_ID": self.ids["run"],
            "POLICY_NAME": "stop-idle",
            "SINCE_TIME": self.ids["since"],
        }
        for name, value in values.items():
            command = re.sub(rf"\b{name}\b", value, command)
        for host in API_HOSTS:
            command = command.replace(host, self.api)
        return command

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.logs
        )


def _idle_instance(moto: str) -> str:
    """One more idle dev instance (CPU 2% for 14 days), for a run of its own."""
    from tests.integration.aws_fleet import MOTO_LINUX_AMI, client

    ec2, cloudwatch = client(moto, "ec2", "us-east-1"), client(moto, "cloudwatch", "us-east-1")
    image = MOTO_LINUX_AMI
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "env", "Value": "dev"}]}]
    made = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large", TagSpecifications=tags
    )
    iid = str(made["Instances"][0]["InstanceId"])
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    cloudwatch.put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Value": 2.0,
                "Unit": "Percent",
                "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                "Timestamp": hour - dt.timedelta(days=d + 1),
            }
            for d in range(14)
        ],
    )
    return iid


def _seed(env: dict[str, str], moto: str) -> dict[str, str]:
    """Real cycles on the simulated account, one target per placeholder of the runbooks:
    run 1 stops an idle instance (ACTION_ID of a rollback), run 2 deletes an approved
    unattached volume (RUN_ID), run 3 stops a second idle instance (POLICY_NAME since
    SINCE_TIME); and one failed action (ACTION_ID of a retry)."""
    from backend.config import reset_settings_cache
    from backend.core.action_planner import ActionPlanner
    from backend.core.database import dispose_engines, session_scope
    from backend.core.models import ActionRow
    from backend.core.types import utcnow
    from tests.integration.execution_support import engine, scan_and_plan, seed

    def succeeded(report: Any) -> int:
        (done,) = [o.action_id for o in report.outcomes if o.result == "succeeded"]
        return int(done)

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        reset_settings_cache()
        try:
            account = seed(moto)
            plan = scan_and_plan()
            stopped = succeeded(engine().execute(dry_run=False))
            with session_scope() as session:
                (volume,) = [
                    r.id for r in session.query(ActionRow).filter_by(state="awaiting_approval")
                ]
                ActionPlanner().approve(session, volume, "runbook-approver")
            run = engine().execute([volume], dry_run=False)
            assert succeeded(run) == volume, (plan, run)
            _idle_instance(moto)
            scan_and_plan()
            succeeded(engine().execute(dry_run=False))
            now = utcnow()
            with session_scope() as session:
                failed = ActionRow(
                    idempotency_key=uuid.uuid4().hex,
                    policy_name="stop-idle",
                    account_id="123456789012",
                    region="us-east-1",
                    kind="ec2",
                    resource_id=account.busy,
                    action="stop",
                    mode="auto",
                    state="failed",
                    error="RequestLimitExceeded: Request limit exceeded.",
                    claimed_at=now - dt.timedelta(minutes=5),
                    finished_at=now - dt.timedelta(minutes=4),
                    created_at=now - dt.timedelta(minutes=10),
                    updated_at=now,
                )
                session.add(failed)
                session.flush()
                failed_id = failed.id
        finally:
            reset_settings_cache()
            dispose_engines()
    return {
        "succeeded": str(stopped),
        "failed": str(failed_id),
        "run": str(run.run_id),
        "since": since,
    }


def _heartbeat_seen(database_url: str) -> bool:
    import psycopg

    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        return bool(conn.execute("SELECT count(*) FROM worker_heartbeats").fetchone()[0])


@pytest.fixture(scope="module")
def deployment(
    moto_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable (FINOPS_TEST_POSTGRES_URL); start it")
    broker = redis.Redis.from_url(REDIS_URL)
    try:
        broker.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (.ci/run does)")
    reset_moto(moto_server_url)
    tmp = tmp_path_factory.mktemp("runbook")
    from tests.integration.execution_support import PACK

    pack = tmp / "pack.yml"
    pack.write_text(PACK, encoding="utf-8")
    port = free_port()
    with scratch_postgres_database() as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FINOPS_", "AWS_"))},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "AWS_ENDPOINT_URL": moto_server_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "COST_OPTIMIZATION_ROLE_ARN": ROLE_ARN,
            "FINOPS_ENVIRONMENT": "production",
            "FINOPS_SECRET_KEY": "a-long-random-runbook-test-secret",
            "FINOPS_DRY_RUN": "true",
            "FINOPS_DATA_DIR": str(tmp / "data"),
            "FINOPS_BEAT_SCHEDULE_PATH": str(tmp / "celerybeat-schedule"),
            "FINOPS_POLICY_PATHS": str(pack),
            "FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN": "50",
            "FINOPS_HEARTBEAT_INTERVAL_SECONDS": "2",
            "COLUMNS": "200",
        }
        env.pop("DATABASE_URL_TEST", None)
        migrated = subprocess.run(
            [str(BIN / "finops"), "db", "upgrade"], env=env, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        ids = _seed(env, moto_server_url)
        logs = [tmp / "worker.log", tmp / "serve.log"]
        procs: list[subprocess.Popen[bytes]] = []
        for log, argv in zip(
            logs,
            (
                ["worker", "--pool", "solo", "-Q", "scans,actions,notifications", "-n", "rb@%h"],
                ["serve", "--host", "127.0.0.1", "--port", str(port)],
            ),
            strict=True,
        ):
            with log.open("wb") as sink:
                procs.append(
                    subprocess.Popen(
                        [str(BIN / "finops"), *argv],
                        env=env,
                        cwd=tmp,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        api = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{api}/health/live", timeout=90)
            wait_until(lambda: _heartbeat_seen(database_url), 90, "the worker's heartbeat")
            yield Deployment(env, api, ids, logs)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            broker.flushdb()


COMMANDS = to_run()


def test_the_runbooks_have_application_commands() -> None:
    if not SPEC.exists():
        pytest.skip(f"the spec runbook is not at {SPEC}")
    spec = [c for c in COMMANDS if c.source.startswith("spec:")]
    # 14 python -c calls, 3 scripts, 3 aws calls, the API's /health/ready (and the metric)
    assert len([c for c in spec if c.text.startswith("python -c")]) == 14
    assert len([c for c in spec if "scripts/" in c.text]) == 3
    assert len([c for c in spec if c.text.startswith("aws ")]) == 3


@pytest.mark.parametrize("command", COMMANDS, ids=[c.source for c in COMMANDS])
def test_runbook_command_works(deployment: Deployment, command: Command) -> None:
    metric = PROMETHEUS_QUERY.search(command.text)
    if metric:  # no Prometheus here: the metric it queries must be on the API's /metrics
        with urllib.request.urlopen(f"{deployment.api}/metrics", timeout=30) as response:
            exposed = response.read().decode()
        assert re.search(rf"^{metric['metric']}(\{{|\s)", exposed, re.MULTILINE), metric[0]
        return
    text = deployment.fill(command.text)
    done = deployment.run(text)
    print(f"$ {text}\n{done.stdout}")  # shown by pytest -rP
    try:
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{text}\nexit {done.returncode}\n{output}"
        assert done.stdout.strip(), f"{text}\nprinted nothing on stdout\n{output}"
        assert "Traceback" not in output, f"{text}\n{output}"
        for pattern, wanted in EXPECTED:
            if re.search(pattern, text):
                assert re.search(wanted, done.stdout), f"{text}\nno {wanted!r} in\n{done.stdout}"
    except AssertionError:
        print(deployment.tail())
        raise
    finally:
        if ENGAGES_THE_STOP.search(text):  # the next command starts from a running system
            lifted = deployment.run("finops resume --actor runbook-test --i-am-admin")
            assert lifted.returncode == 0, lifted.stdout + lifted.stderr


def test_the_vendored_spec_is_the_spec_verbatim() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip(f"no {SHARED_SPEC} beside this checkout to compare with")
    assert VENDORED_SPEC.read_bytes() == SHARED_SPEC.read_bytes(), (
        f"{SHARED_SPEC} changed: copy it to {VENDORED_SPEC}"
    )
