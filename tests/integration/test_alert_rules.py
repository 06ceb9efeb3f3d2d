"""The Prometheus alert rules (deploy/prometheus/finops-alerts.yml) and the metrics they need.

- promtool checks the rules and runs their unit tests (finops-alerts.test.yml);
- the runbook's alert names exist, each alert's severity is the runbook's class for the
  failure it answers, and each runbook link points at a heading of the runbook;
- every metric an expression names is in the real /metrics output of the app, so the rules
  cannot drift from the code;
- the metrics added for the alerts follow the database and the API's own failures.

promtool comes from Debian's `prometheus` package; without it the promtool tests are
skipped and say so (CI installs it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import NotificationRow, ScanRunRow, WorkerHeartbeatRow
from backend.core.types import utcnow
from tests.support.api_client import Api, build_api, seed_action

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "finops-alerts.yml"
RULE_TESTS = RULES_DIR / "finops-alerts.test.yml"
RUNBOOK_PATH = "docs/runbooks/automation-failure-response.md"
# The runbook in the repository, or the on-call spec it is copied from.
RUNBOOKS = (
    ROOT / RUNBOOK_PATH,
    ROOT.parent / "shared" / "spec" / "automation-failure-response.md",
    ROOT / "docs" / "runbooks" / "spec" / "automation-failure-response.md",
)
PROMTOOL = shutil.which("promtool")
# On CI (.ci/run installs it) a missing promtool is a failure, not a skip.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool is not installed (Debian: apt-get install -y prometheus); "
    "the alert rules were not checked",
)

# Each alert, the class the runbook gives the failure it answers, and that failure's line in
# the runbook's "Severity Classification". A new alert has to say which line it answers.
SEVERITIES = {
    "FinOpsAutomationEngineDown": ("P1", "Automation engine completely down"),
    "SafetyCheckFailures": ("P0", "Safety checks failing and production resources at risk"),
    "HighFailedOptimizationActions": ("P1", "High rate of action failures (>50%)"),
    "FinOpsOptimizationActionsFailing": ("P2", "Individual optimization actions failing"),
    "FinOpsAuditLoggingFailures": ("P1", "Audit logging failures"),
    "FinOpsAuditChainBroken": ("P1", "Audit logging failures"),
    "FinOpsRollbackFailures": ("P1", "Rollback system failures"),
    "FinOpsNotificationFailures": ("P2", "Notification system failures"),
    # "Worker processes not responding" and "Queue backlog building up" are symptoms the
    # runbook lists under Automation Engine Down.
    "FinOpsWorkersNotResponding": ("P1", "Automation engine completely down"),
    "FinOpsActionBacklogGrowing": ("P1", "Automation engine completely down"),
    "FinOpsScansSlowingDown": ("P2", "Performance degradation"),
}
RUNBOOK_ALERTS = {
    "FinOpsAutomationEngineDown",
    "SafetyCheckFailures",
    "HighFailedOptimizationActions",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- reading the rules and the runbook ------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def runbook() -> str | None:
    for path in RUNBOOKS:
        if path.is_file():
            return path.read_text()
    return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)}


def severity_sections(markdown: str) -> dict[str, str]:
    """'P0' -> the text of the runbook's '### P0 (...)' section, up to the next heading."""
    found = re.finditer(r"^### (P\d) \(.*?\n(.*?)(?=^#)", markdown, re.M | re.S)
    return {m.group(1): m.group(2) for m in found}


# PromQL words that are not metric names (functions and aggregations are told by their "(").
_KEYWORDS = {"and", "or", "unless", "bool", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    bare = re.sub(r"\{[^}]*\}", " ", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # ranges
    bare = re.sub(r"\boffset\s+\w+", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    words = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", bare)
    return {word for word in words if word not in _KEYWORDS}


# -- the rules, with promtool ---------------------------------------------------------------


def promtool(*args: str | Path, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests pin severities and thresholds: a rule that drifts fails them."""
    for alert, old, new in (
        ("SafetyCheckFailures", "severity: P0", "severity: P1"),
        ("HighFailedOptimizationActions", ") > 0.5", ") > 0.7"),
        ("FinOpsActionBacklogGrowing", "oldest_age_seconds > 1800", "oldest_age_seconds > 0"),
    ):
        assert RULES.read_text().count(old) == 1, old
        (tmp_path / RULES.name).write_text(RULES.read_text().replace(old, new))
        (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
        result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{old} -> {new} went unnoticed:\n{output}"
        assert "FAILED" in output and f"alertname: {alert}," in output, output


# -- the rules against the runbook ------------------------------------------------------------


def test_every_alert_the_runbook_names_exists() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    named = set(RUNBOOK_ALERTS)
    text_ = runbook()
    if text_ is not None:
        in_runbook = set(re.findall(r"^Alert: (\w+)\s*$", text_, re.M))
        assert in_runbook, "the runbook names no alert: its format changed"
        named |= in_runbook
    assert named <= set(names), f"missing alert(s): {sorted(named - set(names))}"


def test_each_alert_has_the_runbook_severity_a_link_and_a_text() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == set(SEVERITIES), "say which runbook failure each alert answers"
    for name, (severity, _failure) in SEVERITIES.items():
        rule = rules[name]
        assert rule["labels"]["severity"] == severity, name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook_url"].startswith(f"{RUNBOOK_PATH}#"), name


def test_severities_and_links_match_the_runbook_text() -> None:
    text_ = runbook()
    if text_ is None:
        pytest.skip(f"no runbook at {RUNBOOK_PATH} nor in ../shared/spec: links not checked")
    sections = severity_sections(text_)
    assert set(sections) == {"P0", "P1", "P2"}, "the runbook's classes changed"
    for name, (severity, failure) in SEVERITIES.items():
        assert f"- {failure}\n" in sections[severity] + "\n", (name, severity, failure)
    headings = anchors(text_)
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in headings, f"{rule['alert']}: no heading #{anchor} in the runbook"


def test_metric_names_are_read_from_expressions() -> None:
    expr = (
        'max without () (sum by (a) (increase(x_total{b="c|d",e=~".+"}[5m] offset 1h)) '
        "/ ignoring (f) y_seconds > 2 * quantile_over_time(0.5, z[1d]) and on() time() - w)"
    )
    assert metric_names(expr) == {"x_total", "y_seconds", "z", "w"}
    assert metric_names("absent(up) or vector(1)") == {"up"}


# -- the rules against the code: every metric is really exposed -------------------------------


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    return build_api(tmp_path, monkeypatch)


@pytest.fixture
def api_with_workers(broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The distributed mode: REDIS_URL set (the workers' counters live in Redis)."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    return build_api(tmp_path, monkeypatch)


@pytest.fixture
def any_api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def audit(kind: str, outcome: str, subject_type: str = "action", **details: object) -> None:
    AuditLogger().log(
        kind, subject_type=subject_type, subject_id=1, actor="w", outcome=outcome, details=details
    )


def seed_everything_the_alerts_read() -> None:
    now = utcnow()
    with session_scope() as session:
        session.add(WorkerHeartbeatRow(worker="w1", last_seen=now))
        session.add(
            ScanRunRow(
                started_at=now - dt.timedelta(minutes=5),
                finished_at=now - dt.timedelta(minutes=4),
                status="complete",
                counts={"resources": 3},
            )
        )
        session.add(ScanRunRow(started_at=now - dt.timedelta(seconds=30), status="running"))
        session.add(
            NotificationRow(
                channel="slack", severity="P1", category="t", subject="s", body="b", status="failed"
            )
        )
    audit("execution", "failed", error="AccessDenied: no")
    audit("execution", "succeeded")
    audit("rollback", "impossible", why="no snapshot")
    audit("safety_verdict", "blocked", stage="execute", summary="protected-tag: env=prod")


def label_matches(expr: str) -> set[tuple[str, str, str]]:
    """(metric, label, value) for each `metric{label="value"}` equality matcher."""
    found = set()
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
        for label, wanted in re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers):
            found.add((name, label, wanted))
    return found


def test_every_metric_the_alerts_use_is_exposed(api_with_workers: Api) -> None:
    seed_everything_the_alerts_read()
    samples = scrape(api_with_workers.client)
    exposed = {name for name, _ in samples}
    used = {name: rule["alert"] for rule in alert_rules() for name in metric_names(rule["expr"])}
    assert len(used) >= 10, used  # the parser found the expressions' metrics
    missing = {name: alert for name, alert in used.items() if name not in exposed}
    assert not missing, f"alerts use metrics /metrics does not expose: {missing}"
    # And the label values they select: a renamed label or value would match nothing.
    selected = {m for rule in alert_rules() for m in label_matches(rule["expr"])}
    assert ("finops_metrics_scrape_errors", "part", "audit") in selected
    for name, label, wanted in selected:
        assert any(n == name and (label, wanted) in labels for n, labels in samples), (
            f"no {name}{{{label}={wanted!r}}} in /metrics"
        )


# -- the metrics added for the alerts ---------------------------------------------------------


def test_a_workers_failed_audit_write_reaches_the_apis_metrics(
    api_with_workers: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.config import get_settings, reset_settings_cache
    from backend.core.automation_audit_logger import AuditLogError
    from backend.runtime.services import WorkerServices

    before = scrape(api_with_workers.client)
    assert value(before, "finops_worker_audit_write_failures_total") == 0.0
    served = os.environ["DATABASE_URL"]
    # A worker whose database is gone: its audit writes fail, and say so to their caller.
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    reset_settings_cache()
    worker = WorkerServices(get_settings())
    for _ in range(2):
        with pytest.raises(AuditLogError):
            worker.audit.log(
                "execution", subject_type="action", subject_id=1, actor="w", outcome="succeeded"
            )
    monkeypatch.setenv("DATABASE_URL", served)
    reset_settings_cache()
    after = scrape(api_with_workers.client)
    assert value(after, "finops_worker_audit_write_failures_total") == 2.0
    assert value(after, "finops_metrics_scrape_errors", part="worker_audit") == 0.0


def test_only_blocks_at_execution_count_as_execution_safety_failures(any_api: Api) -> None:
    audit("safety_verdict", "blocked", stage="plan", summary="protected-tag: env=prod")
    audit("safety_verdict", "blocked", stage="execute", summary="dependency: in an ASG")
    audit("safety_verdict", "blocked", "run", rule="blast-radius", summary="too many")
    audit("safety_verdict", "blocked", stage="notice", **{"from": "approved"})  # a state change
    samples = scrape(any_api.client)
    total = "finops_safety_check_failures_total"
    at_execution = "finops_safety_check_execution_failures_total"
    assert value(samples, total, rule="protected-tag") == 1.0
    assert value(samples, at_execution, rule="protected-tag") == 0.0  # planning: routine
    assert value(samples, at_execution, rule="dependency") == 1.0
    assert value(samples, at_execution, rule="blast-radius") == 1.0  # a batch stopped
    # Every rule is there from the first scrape, so the first block is an increase.
    assert value(samples, at_execution, rule="change-freeze") == 0.0
    assert value(samples, at_execution, rule="other") == 0.0


def test_rollback_failures_count_impossible_undos_and_5xx_answers(any_api: Api) -> None:
    before = scrape(any_api.client)
    assert value(before, "finops_rollback_failures_total") == 0.0
    assert value(before, "finops_rollback_request_errors_total") == 0.0
    # A volume change whose pre-state lacks the old type: the undo is impossible, no AWS call.
    pre_state = {
        "kind": "ebs",
        "resource_id": "vol-0abc",
        "account_id": "111111111111",
        "region": "us-east-1",
        "state": "in-use",
        "attributes": {"Size": 100},
    }
    action = seed_action(
        state="succeeded",
        action="modify-volume",
        policy_name="gp2-to-gp3",
        params={"volume-type": "gp3"},
        pre_state=pre_state,
    )
    answer = any_api.post(f"/api/v1/actions/{action}/rollback", "april")
    assert answer.status_code == 502, answer.text
    assert answer.json()["type"] == "urn:finops:problem:rollback-failed"
    after = scrape(any_api.client)
    assert value(after, "finops_rollback_failures_total") == 1.0
    assert value(after, "finops_rollback_request_errors_total") == 1.0
    assert value(after, "finops_action_failures_total", reason="rollback-impossible") == 1.0
    audit("rollback", "rolled_back", **{"from": "succeeded"})  # a rollback that worked
    assert value(scrape(any_api.client), "finops_rollback_failures_total") == 1.0
    audit("rollback", "failed", error="AccessDenied: StartInstances", changes=1)  # half-way
    last = scrape(any_api.client)
    assert value(last, "finops_rollback_failures_total") == 2.0
    assert value(last, "finops_action_failures_total", reason="rollback-failed") == 1.0


def test_failed_notifications_of_the_last_day_are_reported_per_channel(any_api: Api) -> None:
    now = utcnow()

    def note(channel: str, status: str, age: dt.timedelta) -> None:
        with session_scope() as session:
            session.add(
                NotificationRow(
                    channel=channel,
                    severity="P1",
                    category="t",
                    subject="s",
                    body="b",
                    status=status,
                    created_at=now - age,
                )
            )

    note("slack", "failed", dt.timedelta(minutes=5))
    note("slack", "failed", dt.timedelta(hours=2))
    note("slack", "sent", dt.timedelta(minutes=1))
    note("email", "failed", dt.timedelta(days=2))  # older than the window
    note("email", "pending", dt.timedelta(minutes=1))
    samples = scrape(any_api.client)
    assert value(samples, "finops_notifications_failed", channel="slack") == 2.0
    assert value(samples, "finops_notifications_failed", channel="email") is None
    assert value(samples, "finops_metrics_scrape_errors", part="notifications") == 0.0
    with session_scope() as session:  # a retry delivers them
        session.execute(update(NotificationRow).values(status="sent"))
    assert value(scrape(any_api.client), "finops_notifications_failed", channel="slack") is None


def test_a_running_scan_reports_how_long_it_has_run(any_api: Api) -> None:
    assert value(scrape(any_api.client), "finops_scan_in_progress_seconds") == 0.0  # no scan
    now = utcnow()
    with session_scope() as session:
        session.add(
            ScanRunRow(
                started_at=now - dt.timedelta(hours=1),
                finished_at=now - dt.timedelta(minutes=50),
                status="complete",
            )
        )
        running = ScanRunRow(started_at=now - dt.timedelta(minutes=20), status="running")
        session.add(running)
        session.flush()
        running_id = running.id
    samples = scrape(any_api.client)
    assert value(samples, "finops_scan_in_progress_seconds") == pytest.approx(1200, abs=30)
    assert value(samples, "finops_last_scan_duration_seconds") == pytest.approx(600)
    with session_scope() as session:
        session.execute(
            update(ScanRunRow).where(ScanRunRow.id == running_id).values(finished_at=utcnow())
        )
    samples = scrape(any_api.client)
    assert value(samples, "finops_scan_in_progress_seconds") == 0.0
    assert value(samples, "finops_last_scan_duration_seconds") == pytest.approx(1200, abs=30)


def test_an_edited_audit_event_breaks_the_chain_until_the_database_changes(any_api: Api) -> None:
    assert value(scrape(any_api.client), "finops_audit_chain_valid") == 1.0
    audit("execution", "succeeded")
    audit("execution", "succeeded")
    assert value(scrape(any_api.client), "finops_audit_chain_valid") == 1.0  # new events checked
    audit("execution", "failed", error="AccessDenied: no")
    with session_scope() as session:  # someone turns the failure into a success
        head = session.scalar(text("SELECT max(id) FROM audit_events"))
        session.execute(
            text("UPDATE audit_events SET outcome = 'succeeded' WHERE id = :id"), {"id": head}
        )
    samples = scrape(any_api.client)
    assert value(samples, "finops_audit_chain_valid") == 0.0
    audit("execution", "succeeded")  # later events do not make the break go away
    assert value(scrape(any_api.client), "finops_audit_chain_valid") == 0.0


REFUSE_AUDIT = """
CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
BEGIN SELECT RAISE(ABORT, 'disk full'); END
"""


def test_audit_write_failures_are_counted_once_wherever_they_are_handled(api: Api) -> None:
    assert api.post("/api/v1/emergency-stop", "otto", json={"reason": "drill"}).status_code == 200
    failures = "finops_audit_write_failures_total"
    assert value(scrape(api.client), failures) == 0.0
    with session_scope() as session:
        session.execute(text(REFUSE_AUDIT))

    # Swallowed by the route: the refusal stands, unrecorded.
    assert api.post("/api/v1/actions/plan", "vera").status_code == 403
    assert value(scrape(api.client), failures) == 1.0
    # Turned into a 503 by the route.
    release = api.post("/api/v1/emergency-stop/release", "ada")
    assert release.status_code == 503 and "audit" in release.json()["type"], release.text
    assert value(scrape(api.client), failures) == 2.0
    # Not handled, from a logger the context did not make (PolicyManager's): a 500.
    disable = api.post("/api/v1/policies/gp2-to-gp3/disable", "otto", json={"reason": "x"})
    assert disable.status_code == 500, disable.text
    assert value(scrape(api.client), failures) == 3.0
    # Not handled, from the context's logger: counted where it failed, not again at the end.
    created = api.post("/api/v1/users", "ada", json={"username": "xavier", "role": "viewer"})
    assert created.status_code == 500, created.text
    assert value(scrape(api.client), failures) == 4.0

    with session_scope() as session:
        session.execute(text("DROP TRIGGER refuse_audit"))
    assert api.post("/api/v1/actions/plan", "vera").status_code == 403
    assert value(scrape(api.client), failures) == 4.0
