"""PolicyManager and `finops policy` on SQLite and PostgreSQL: files say what, the DB says when."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import AuditEventRow, OverrideRow, PolicyRow
from backend.core.policy_manager import PolicyManager, UnknownPolicyError
from backend.core.types import utcnow
from backend.domain.policy import PolicyValidationError

REPO = Path(__file__).resolve().parents[2]
EBS = """\
policies:
  - name: unattached-ebs-delete
    resource: ebs
    description: Snapshot, then delete, unattached volumes.
    filters:
      - State: available
    action: {type: delete, backup: true}
    mode: approval

  - name: gp2-to-gp3
    resource: ebs
    filters: [{VolumeType: gp2}]
    action: {type: modify-volume, volume-type: gp3}
    mode: auto
"""
EC2 = """\
policies:
  - name: stopped-ec2-report
    resource: ec2
    filters:
      - "State.Name": stopped
"""
BROKEN = """\
policies:
  - name: bad-filter
    resource: ebs
    filters:
      - {type: no-such-filter}
    action: delete
"""
NAMES = ["unattached-ebs-delete", "gp2-to-gp3", "stopped-ec2-report"]


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "ebs.yml").write_text(EBS)
    (folder / "ec2.yaml").write_text(EC2)
    return folder


@pytest.fixture
def db(any_database: str) -> str:
    migrations.upgrade()
    return any_database


def enabled_names(manager: PolicyManager, now: dt.datetime | None = None) -> list[str]:
    with session_scope() as session:
        return [p.name for p in manager.effective_pack(session, now or utcnow()).enabled()]


def rows() -> dict[str, PolicyRow]:
    with session_scope() as session:
        return {r.name: r for r in session.scalars(select(PolicyRow))}


def policy_events() -> list[tuple[str, str]]:
    with session_scope() as session:
        found = session.execute(
            select(AuditEventRow.subject_id, AuditEventRow.outcome)
            .where(AuditEventRow.event_type == "policy_change")
            .order_by(AuditEventRow.id)
        )
        return [(str(s), str(o)) for s, o in found]


def test_validate_ok_prints_a_summary(
    db: str, pack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = PolicyManager([pack_dir]).validate_all_policies()
    assert (report.ok, report.policies, report.files, report.problems) == (True, 3, 2, [])
    out = capsys.readouterr().out
    assert f"policy pack OK: 3 policies in 2 files ({pack_dir})" in out
    assert report.database_checked and "not yet in the database" in out  # never synced


def test_refused_pack_names_file_policy_line_and_loads_nothing(
    db: str, pack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = pack_dir / "broken.yml"
    broken.write_text(BROKEN)
    manager = PolicyManager([pack_dir])
    report = manager.validate_all_policies()
    assert not report.ok and (report.policies, report.files) == (0, 3)
    [problem] = report.problems
    assert (problem.file, problem.policy, problem.line) == (str(broken), "bad-filter", 5)
    out = capsys.readouterr().out
    assert f"{broken}:5: policy 'bad-filter':" in out
    assert "policy pack REFUSED: 1 problem(s); nothing from it will run" in out
    with pytest.raises(PolicyValidationError):
        manager.load()
    with pytest.raises(PolicyValidationError), session_scope() as session:
        manager.sync(session, "alice")
    assert rows() == {} and policy_events() == []


@pytest.mark.parametrize("database", ["unreachable", "unmigrated", "absent"])
def test_database_trouble_still_validates_the_files(
    database: str,
    pack_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = {
        "unreachable": "postgresql://finops@127.0.0.1:1/finops",
        "unmigrated": f"sqlite:///{tmp_path / 'empty.db'}",
    }
    if database == "unmigrated":
        (tmp_path / "empty.db").touch()
    if database in urls:
        monkeypatch.setenv("DATABASE_URL", urls[database])
    reset_settings_cache()
    report = PolicyManager([pack_dir]).validate_all_policies()
    assert report.ok and report.policies == 3 and not report.database_checked
    out = capsys.readouterr().out
    assert "policy pack OK: 3 policies in 2 files" in out and "database not checked" in out
    assert not (tmp_path / "data" / "finops.db").exists()  # a check creates no database


def test_runbook_one_liner_prints_the_report(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")}
    env.pop("DATABASE_URL", None)
    env.update(PYTHONPATH=str(REPO), FINOPS_DATA_DIR=str(tmp_path / "data"))
    code = "from backend.core.policy_manager import PolicyManager; "
    code += "PolicyManager().validate_all_policies()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"policies in {len(list((REPO / 'policies').glob('*.y*ml')))} files" in done.stdout
    assert done.stdout.startswith("policy pack OK: ") and str(REPO / "policies") in done.stdout


def test_sync_records_definitions_and_keeps_database_state(db: str, pack_dir: Path) -> None:
    manager = PolicyManager([pack_dir])
    with session_scope() as session:
        result = manager.sync(session, "alice")
    assert (result.created, result.updated, result.stale) == (NAMES, [], [])
    stored = rows()["gp2-to-gp3"]
    assert (stored.kind, stored.mode, stored.enabled, stored.paused_until) == (
        "ebs",
        "auto",
        True,
        None,
    )
    assert stored.source == f"{pack_dir / 'ebs.yml'}:10"
    assert stored.definition == {
        "name": "gp2-to-gp3",
        "resource": "ebs",
        "filters": [{"VolumeType": "gp2"}],
        "action": {"type": "modify-volume", "volume-type": "gp3"},
        "mode": "auto",
    }
    with session_scope() as session:
        assert manager.sync(session, "alice").unchanged == NAMES
    assert len(policy_events()) == 3  # an unchanged sync writes nothing

    until = utcnow() + dt.timedelta(days=3)
    manager.set_enabled("unattached-ebs-delete", False, "bob", "incident 42")
    manager.pause("gp2-to-gp3", until, "bob", "change freeze")
    (pack_dir / "ebs.yml").write_text(EBS.replace("mode: auto", "mode: approval"))
    (pack_dir / "ec2.yaml").unlink()
    with session_scope() as session:
        result = manager.sync(session, "alice")
    assert (result.updated, result.unchanged, result.stale) == (
        ["gp2-to-gp3"],
        ["unattached-ebs-delete"],
        ["stopped-ec2-report"],
    )
    after = rows()
    assert after["gp2-to-gp3"].mode == "approval"
    assert after["gp2-to-gp3"].definition["mode"] == "approval"
    assert after["gp2-to-gp3"].paused_until == until  # the state survives a sync
    assert after["unattached-ebs-delete"].enabled is False
    report = manager.check()
    assert report.stale == ("stopped-ec2-report",)
    assert any("no longer in the files" in line for line in report.lines)


def test_disabled_paused_and_overridden_policies_do_not_run(db: str, pack_dir: Path) -> None:
    manager = PolicyManager([pack_dir])
    assert enabled_names(manager) == NAMES  # never synced: the files decide
    now = utcnow()
    manager.set_enabled("unattached-ebs-delete", False, "bob", "incident 42")
    manager.pause("gp2-to-gp3", now + dt.timedelta(hours=2), "bob", "freeze")
    with session_scope() as session:
        session.add(
            OverrideRow(
                scope="policy",
                target="stopped-ec2-report",
                reason="audit",
                created_by="carol",
                expires_at=now + dt.timedelta(days=1),
            )
        )
        session.add(
            OverrideRow(scope="policy", target="gone-policy", reason="old", created_by="carol")
        )
        session.add(
            OverrideRow(
                scope="account", target="stopped-ec2-report", reason="n/a", created_by="carol"
            )
        )
    assert enabled_names(manager, now) == []
    with session_scope() as session:
        pack = manager.effective_pack(session, now)
        statuses = {s.policy.name: s.blocked_by for s in manager.statuses(session, now)}
    assert len(pack) == 3 and not any(p.enabled for p in pack)
    assert statuses["unattached-ebs-delete"] == ["disabled"]
    assert statuses["gp2-to-gp3"][0].startswith("paused until")
    expiry = f"{now + dt.timedelta(days=1):%Y-%m-%d %H:%M}Z"
    assert statuses["stopped-ec2-report"] == [f"override: audit (by carol, until {expiry})"]
    # Later: the pause and the override have run out.
    later = now + dt.timedelta(days=2)
    assert enabled_names(manager, later) == ["gp2-to-gp3", "stopped-ec2-report"]
    manager.set_enabled("unattached-ebs-delete", True, "bob")
    assert manager.resume("gp2-to-gp3", "bob") is True
    assert manager.resume("gp2-to-gp3", "bob") is False
    assert enabled_names(manager, now) == ["unattached-ebs-delete", "gp2-to-gp3"]
    report = manager.check()
    assert report.unknown_overrides == ("gone-policy",)
    assert any("override #2 pauses unknown policy 'gone-policy'" in x for x in report.lines)


def test_changes_are_audited_and_follow_the_callers_transaction(db: str, pack_dir: Path) -> None:
    manager = PolicyManager([pack_dir])
    until = utcnow() + dt.timedelta(days=1)
    assert manager.set_enabled("gp2-to-gp3", False, "bob", "noisy") is True  # syncs first
    assert manager.set_enabled("gp2-to-gp3", False, "bob", "again") is False
    manager.pause("stopped-ec2-report", until, "bob", "quiet week")
    manager.resume("stopped-ec2-report", "bob")
    manager.set_enabled("gp2-to-gp3", True, "bob")
    assert policy_events() == [
        *[(name, "created") for name in NAMES],
        ("gp2-to-gp3", "disabled"),
        ("stopped-ec2-report", "paused"),
        ("stopped-ec2-report", "resumed"),
        ("gp2-to-gp3", "enabled"),
    ]
    events = AuditLogger().events(utcnow() - dt.timedelta(hours=1))
    paused = next(e for e in events if e.outcome == "paused")
    assert paused.actor == "bob" and paused.details["reason"] == "quiet week"
    assert paused.details["to"] == {"paused_until": until.isoformat(timespec="microseconds")}
    assert AuditLogger().verify().ok

    def change_then_fail() -> None:
        with session_scope() as session:
            manager.set_enabled("gp2-to-gp3", False, "bob", "rolled back", session=session)
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert rows()["gp2-to-gp3"].enabled is True and len(policy_events()) == 7


def test_refusals_are_clear(db: str, pack_dir: Path) -> None:
    manager = PolicyManager([pack_dir])
    with pytest.raises(UnknownPolicyError) as caught:
        manager.set_enabled("gp2-to-gp4", False, "bob", "typo")
    message = str(caught.value)
    assert "unknown policy 'gp2-to-gp4' (did you mean 'gp2-to-gp3'?)" in message
    assert all(name in message for name in NAMES)
    with pytest.raises(ValueError, match="reason"):
        manager.set_enabled("gp2-to-gp3", False, "bob", "  ")
    with pytest.raises(ValueError, match="not in the future"):
        manager.pause("gp2-to-gp3", utcnow() - dt.timedelta(minutes=1), "bob", "late")
    with pytest.raises(ValueError, match="time zone"):
        manager.pause("gp2-to-gp3", dt.datetime(2099, 1, 1), "bob", "naive")
    assert rows() == {} and policy_events() == []


def cli(*args: str) -> Any:
    import backend.cli.policy  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    # Wide enough that no table cell the tests read wraps, whatever the terminal (CI has none).
    console.width = err.width = 250
    return CliRunner().invoke(app, ["policy", *args])


def test_cli(db: str, pack_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(pack_dir))
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert "3 created, 0 updated, 0 unchanged" in result.output

    result = cli("disable", "gp2-to-gp3")
    assert result.exit_code == 2 and "--reason" in result.output
    result = cli("disable", "gp2-to-gp3", "--reason", "noisy")
    assert result.exit_code == 0, result.output
    assert "policy 'gp2-to-gp3' disabled" in result.output
    for bad in ("yesterday", "2020-01-01T00:00Z", "2099-01-01T00:00"):
        result = cli("pause", "stopped-ec2-report", "--until", bad, "--reason", "x")
        assert result.exit_code == 2 and "--until" in result.output, (bad, result.output)
    result = cli("pause", "stopped-ec2-report", "--until", "7d", "--reason", "quiet week")
    assert result.exit_code == 0 and "paused until" in result.output, result.output
    paused = rows()["stopped-ec2-report"].paused_until
    assert paused is not None and abs(paused - utcnow() - dt.timedelta(days=7)).seconds < 60

    result = cli("list")
    assert result.exit_code == 0, result.output
    assert "no: disabled" in result.output and "no: paused until" in result.output
    result = cli("validate")
    assert result.exit_code == 0 and "policy pack OK: 3 policies in 2 files" in result.output
    assert "1 of 3 policies may run" in result.output

    result = cli("resume", "stopped-ec2-report")
    assert result.exit_code == 0 and "policy 'stopped-ec2-report' resumed" in result.output
    result = cli("enable", "gp2-to-gp3")
    assert result.exit_code == 0 and "policy 'gp2-to-gp3' enabled" in result.output
    result = cli("enable", "nope")
    assert result.exit_code == 1 and "unknown policy 'nope'" in result.output
    assert enabled_names(PolicyManager()) == NAMES

    (pack_dir / "broken.yml").write_text(BROKEN)
    result = cli("validate", str(pack_dir / "broken.yml"))
    assert result.exit_code == 2 and "policy pack REFUSED: 1 problem(s)" in result.output
    assert "bad-filter" in result.output
    result = cli("sync")
    assert result.exit_code == 2 and "policy pack refused" in result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(AuditEventRow)) == 7


def test_beat_keeps_the_cron_of_a_policy_paused_when_it_starts(db: str) -> None:
    """Beat builds its entries once; a pause then must not drop the policy for good."""
    from backend.config import Settings
    from backend.runtime.beat import scheduled_entries

    PolicyManager().pause("offhours-nonprod", utcnow() + dt.timedelta(hours=1), "bob", "freeze")
    cycles = [
        e["kwargs"]["policies"]
        for n, e in scheduled_entries(Settings()).items()
        if n != "reconcile"
    ]
    assert ["offhours-nonprod"] in cycles
