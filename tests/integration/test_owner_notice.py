"""Owner notice against a moto_server: mark, notify, wait, re-check, act (or not)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow, NotificationRow
from backend.core.notification_service import NotificationService
from backend.core.notification_settings import reset_notification_settings_cache
from backend.core.owner_notice import NO_OWNER, NOT_NOTIFIED, SCHEDULED_TAG, OwnerNotice
from backend.core.scan_service import ScanService
from backend.core.types import utcnow
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.retry import describe_error
from tests.integration.aws_fleet import MOTO_LINUX_AMI, client
from tests.support.peers import HttpPeer, Mail, SmtpPeer
from tests.support.servers import free_port

pytestmark = pytest.mark.moto_server

PACK = """
policies:
  - name: delete-unattached
    resource: ebs
    filters: [unattached]
    action: {type: delete, backup: true}
    mode: approval
    notice: {notify: true, grace-days: 7}
"""


class Clock:
    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def days(self, n: float) -> Clock:
        later = Clock()
        later.now = self.now + dt.timedelta(days=n)
        return later


def pack() -> PolicyPack:
    return load_text(PACK, "owner-notice-test.yml")


def ec2(url: str) -> Any:
    return client(url, "ec2", "us-east-1")


def volume(url: str, tags: dict[str, str]) -> str:
    spec = [{"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    return str(
        ec2(url).create_volume(
            AvailabilityZone="us-east-1a",
            Size=10,
            VolumeType="gp3",
            **({"TagSpecifications": spec} if tags else {}),
        )["VolumeId"]
    )


def tags_of(url: str, vid: str) -> dict[str, str]:
    (v,) = ec2(url).describe_volumes(VolumeIds=[vid])["Volumes"]
    return {t["Key"]: t["Value"] for t in v.get("Tags", [])}


def exists(url: str, vid: str) -> bool:
    return any(v["VolumeId"] == vid for v in ec2(url).describe_volumes()["Volumes"])


def scan(clock: Clock | None = None) -> None:
    ScanService(get_settings(), now=clock or utcnow).run(pack=pack(), regions=["us-east-1"])


def plan(clock: Clock, **kw: Any) -> PlanResult:
    with session_scope() as session:
        return ActionPlanner(clock=clock).plan(session, pack(), requested_by="planner", **kw)


def actions() -> dict[str, ActionRow]:
    with session_scope() as session:
        return {r.resource_id: r for r in session.scalars(select(ActionRow))}


def approve(clock: Clock, action_id: int) -> None:
    with session_scope() as session:
        ActionPlanner(clock=clock).approve(session, action_id, "alice")


def unmark() -> list[int]:
    with session_scope() as session:
        return OwnerNotice().unmark_resolved(session)


@pytest.fixture
def sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings_cache()
    return url


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpPeer]:
    # Owner notices go by email (notify_owner); the webhook gets the team's messages.
    with SmtpPeer() as peer, HttpPeer() as hook:
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(peer.port),
            "EMAIL_FROM": "finops@example.com",
            "WEBHOOK_URL": hook.url,
            "ATTEMPTS": "1",
            "BACKOFF_SECONDS": "0",
            "TIMEOUT_SECONDS": "3",
        }.items():
            monkeypatch.setenv(f"FINOPS_NOTIFY_{name}", value)
        monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
        reset_notification_settings_cache()
        reset_settings_cache()
        yield peer
    reset_notification_settings_cache()


def _start(url: str) -> None:
    upgrade()
    scan()


def test_mark_notify_wait_recheck_act(moto_url: str, any_database: str, smtp: SmtpPeer) -> None:
    vid = volume(moto_url, {"owner": "bob@example.com"})
    _start(moto_url)
    t0 = Clock()
    result = plan(t0, notify_owners=True)
    row = actions()[vid]
    assert row.state == "awaiting_approval" and result.awaiting == [row.id]
    assert row.not_before == t0.now + dt.timedelta(days=7)
    expected = f"delete on {row.not_before:%Y-%m-%d} (action {row.id})"
    assert tags_of(moto_url, vid)[SCHEDULED_TAG] == expected
    assert [m.rcpt_to for m in smtp.mail] == [["bob@example.com"]]
    notice = [e for e in AuditLogger().events("1h") if e.outcome in ("marked", "notified")]
    assert [e.outcome for e in notice] == ["marked", "notified"]
    assert plan(t0, notify_owners=True).created == []  # nothing new: no second notice
    assert len(smtp.mail) == 1

    # wait: approved, but the engine does nothing before the grace period ends
    # (approved near the end of the grace period: an approval lasts 24 hours)
    approve(t0.days(6.9), row.id)
    early = ActionEngine(pack=pack(), clock=t0.days(6.9)).execute(dry_run=False)
    assert early.outcomes == []
    assert exists(moto_url, vid)

    # after: re-checked on a fresh describe, then acted on
    late = ActionEngine(pack=pack(), clock=t0.days(7.5)).execute(dry_run=False)
    assert [o.result for o in late.outcomes] == ["succeeded"]
    assert not exists(moto_url, vid)
    assert AuditLogger().verify().ok


def test_evidence_older_than_the_grace_and_the_bound_blocks_a_notified_action(
    moto_url: str, sqlite: str, smtp: SmtpPeer
) -> None:
    """The 7.5 days above pass (7 days' grace + the 24-hour bound); 8.5 days without a
    scan since the plan do not."""
    vid = volume(moto_url, {"owner": "bob@example.com"})
    _start(moto_url)
    t0 = Clock()
    plan(t0, notify_owners=True)
    row = actions()[vid]
    approve(t0.days(8.4), row.id)
    report = ActionEngine(pack=pack(), clock=t0.days(8.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    # 8d 12h, or 8d 11h when the scan ran in the second the clock was truncated to
    assert f"fresh-data: stale inventory: inventory of {vid} is 8d 1" in (report.outcomes[0].detail)
    assert "beyond the 8d 0h bound" in report.outcomes[0].detail
    assert exists(moto_url, vid)


def test_opt_out_during_grace_prevents_the_action(
    moto_url: str, sqlite: str, smtp: SmtpPeer
) -> None:
    vid = volume(moto_url, {"Owner": "bob@example.com"})
    _start(moto_url)
    t0 = Clock()
    plan(t0, notify_owners=True)
    row = actions()[vid]
    approve(t0.days(7), row.id)
    # the owner objects by tagging the volume during the grace period
    ec2(moto_url).create_tags(Resources=[vid], Tags=[{"Key": "finops:opt-out", "Value": "mine"}])
    report = ActionEngine(pack=pack(), clock=t0.days(7.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    assert "opt-out" in report.outcomes[0].detail
    assert exists(moto_url, vid)
    # blocked: the mark goes, so the owner is not left expecting a deletion
    assert unmark() == [row.id]
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)
    assert unmark() == []


def test_a_volume_that_gets_attached_is_unmarked_and_spared(
    moto_url: str, sqlite: str, smtp: SmtpPeer
) -> None:
    vid = volume(moto_url, {"finops:owner": "bob@example.com"})
    _start(moto_url)
    t0 = Clock()
    plan(t0, notify_owners=True)
    row = actions()[vid]
    assert SCHEDULED_TAG in tags_of(moto_url, vid)
    approve(t0.days(7), row.id)

    image = MOTO_LINUX_AMI
    iid = ec2(moto_url).run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "us-east-1a"},
    )["Instances"][0]["InstanceId"]
    ec2(moto_url).attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    scan()  # the opportunity resolves: the volume no longer qualifies
    assert unmark() == [row.id]
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)

    report = ActionEngine(pack=pack(), clock=t0.days(7.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    assert exists(moto_url, vid)


def test_no_owner_and_no_fallback_blocks_and_marks_nothing(
    moto_url: str, sqlite: str, smtp: SmtpPeer
) -> None:
    orphan = volume(moto_url, {})
    team = volume(moto_url, {"owner": "team-a"})  # a team name: no address, no fallback
    _start(moto_url)
    result = plan(Clock(), notify_owners=True)
    rows = actions()
    assert rows[orphan].state == "blocked"
    assert result.blocked[rows[orphan].id] == f"owner-notice: {NO_OWNER}"
    assert rows[team].state == "blocked"
    assert NOT_NOTIFIED in result.blocked[rows[team].id]
    assert result.created == [] and result.awaiting == []
    assert SCHEDULED_TAG not in tags_of(moto_url, orphan)
    assert SCHEDULED_TAG not in tags_of(moto_url, team)
    assert smtp.mail == []


def test_a_team_owner_goes_to_the_fallback_contact(
    moto_url: str, sqlite: str, smtp: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_NOTIFY_FALLBACK_CONTACT", "finops-team@example.com")
    reset_notification_settings_cache()
    vid = volume(moto_url, {"owner": "team-a"})
    _start(moto_url)
    plan(Clock(), notify_owners=True)
    assert actions()[vid].state == "awaiting_approval"
    assert SCHEDULED_TAG in tags_of(moto_url, vid)
    assert [m.rcpt_to for m in smtp.mail] == [["finops-team@example.com"]]


def test_a_failed_notice_holds_the_action(
    moto_url: str, sqlite: str, smtp: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_NOTIFY_SMTP_PORT", str(free_port()))  # nobody listens
    reset_notification_settings_cache()
    vid = volume(moto_url, {"owner": "bob@example.com"})
    _start(moto_url)
    t0 = Clock()
    result = plan(t0, notify_owners=True)
    row = actions()[vid]
    assert row.state == "blocked"
    assert result.blocked[row.id] == f"owner-notice: {NOT_NOTIFIED}"
    assert row.not_before == t0.now + dt.timedelta(days=7)
    with session_scope() as session:
        sent = list(session.scalars(select(NotificationRow)))
    assert [(n.category, n.status) for n in sent] == [("owner_notice", "failed")]
    # marked before the notice failed; the planner's sweep took the mark off again
    assert result.unmarked == [row.id]
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)
    assert unmark() == []
    # the failed notice is not sent later on its own (planning again gives a new one)
    assert NotificationService(clock=t0.days(0.1)).retry_pending() == []

    # Mail works again; planned again a week later, the owner is told now, and the grace
    # period runs from now: not from the first, failed, notice.
    monkeypatch.setenv("FINOPS_NOTIFY_SMTP_PORT", str(smtp.port))
    reset_notification_settings_cache()
    t8 = t0.days(8)
    stale = plan(t8, notify_owners=True)  # on the week-old scan: blocked, nobody told
    assert "fresh-data: stale inventory" in stale.blocked[row.id] and smtp.mail == []
    scan(t8)
    plan(t8, notify_owners=True)
    row = actions()[vid]
    assert row.state == "awaiting_approval" and len(smtp.mail) == 1
    assert row.not_before == t8.now + dt.timedelta(days=7)
    approve(t8, row.id)
    early = ActionEngine(pack=pack(), clock=t8).execute(dry_run=False)
    assert early.outcomes == [] and exists(moto_url, vid)


def test_dry_run_records_and_changes_nothing(moto_url: str, sqlite: str, smtp: SmtpPeer) -> None:
    vid = volume(moto_url, {"owner": "bob@example.com"})
    _start(moto_url)
    plan(Clock())  # dry run by default, notify_owners not asked for
    assert actions()[vid].state == "awaiting_approval"
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)
    assert smtp.mail == []
    (event,) = [e for e in AuditLogger().events("1h") if e.outcome == "dry-run"]
    assert event.details["notice"]["would"] == f"would notify bob@example.com and mark {vid}"


def test_no_lock_is_held_while_the_owner_is_mailed(
    moto_url: str, any_database: str, smtp: SmtpPeer
) -> None:
    """While the mail server takes its time, the rest of the system writes its audit events:
    a live plan holds neither the audit chain's lock nor SQLite's write lock over the mail
    (nor over the marking in AWS before it), or a slow mail server stalls every writer."""
    vid = volume(moto_url, {"owner": "bob@example.com"})
    _start(moto_url)
    written: list[str] = []

    def meanwhile(_mail: Mail) -> None:
        wait = (
            "PRAGMA busy_timeout = 1000" if "sqlite" in any_database else "SET lock_timeout = 1000"
        )
        try:
            with session_scope() as session:
                session.execute(text(wait))
                AuditLogger().record(
                    "test",
                    subject_type="probe",
                    subject_id=1,
                    actor="test",
                    outcome="ok",
                    session=session,
                )
            written.append("written")
        except Exception as exc:  # noqa: BLE001 - what the other writer met, for the assertion
            written.append(describe_error(exc))

    smtp.on_mail = meanwhile
    plan(Clock(), notify_owners=True)
    assert written == ["written"]
    row = actions()[vid]
    assert row.state == "awaiting_approval" and SCHEDULED_TAG in tags_of(moto_url, vid)
    outcomes = [e.outcome for e in AuditLogger().events("1h") if e.subject_type != "scan"]
    assert outcomes[-3:] == ["ok", "marked", "notified"]  # the probe's, then the notice's
    assert AuditLogger().verify().ok
