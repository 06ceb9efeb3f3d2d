"""Owner marks against a moto_server: routed notices, and marks that come off when their
action has run, or when the notice's transaction that made them does not commit."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.audit_chain import AuditEvent
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.notification_service import NotificationService
from backend.core.notification_settings import reset_notification_settings_cache
from backend.core.owner_notice import ROLLED_BACK, SCHEDULED_TAG
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from backend.providers.aws import operations_tags
from tests.integration.test_owner_notice import Clock, actions, ec2, exists, tags_of, unmark
from tests.support.peers import HttpPeer, SmtpPeer

pytestmark = pytest.mark.moto_server

GP3 = """
policies:
  - name: gp2-to-gp3
    resource: ebs
    filters: [{VolumeType: gp2}]
    action: {type: modify-volume, volume-type: gp3}
    mode: auto
    notice: {notify: true, grace-days: 1}
  - name: delete-unattached
    resource: ebs
    filters: [unattached, {VolumeType: gp3}]
    action: {type: delete, backup: true}
    mode: auto
    notice: {notify: true, grace-days: 1}
"""


@dataclass
class Peers:
    smtp: SmtpPeer
    slack: HttpPeer  # a team's own channel (owners_only)
    hook: HttpPeer  # the shared channel: every message but owner notices


def pack() -> PolicyPack:
    return load_text(GP3, "owner-marks-test.yml")


def volume(url: str, owner: str, kind: str = "gp3") -> str:
    spec = [{"ResourceType": "volume", "Tags": [{"Key": "owner", "Value": owner}]}]
    made = ec2(url).create_volume(
        AvailabilityZone="us-east-1a", Size=10, VolumeType=kind, TagSpecifications=spec
    )
    return str(made["VolumeId"])


def volume_type(url: str, vid: str) -> str:
    (v,) = ec2(url).describe_volumes(VolumeIds=[vid])["Volumes"]
    return str(v["VolumeType"])


def scan() -> None:
    ScanService(get_settings()).run(pack=pack(), regions=["us-east-1"])


def plan(clock: Clock) -> PlanResult:
    with session_scope() as session:
        return ActionPlanner(clock=clock).plan(
            session, pack(), requested_by="planner", notify_owners=True
        )


def execute(clock: Clock) -> list[str]:
    report = ActionEngine(pack=pack(), clock=clock).execute(dry_run=False)
    return [o.result for o in report.outcomes]


def mark_events() -> list[AuditEvent]:
    return [
        e
        for e in AuditLogger().events("1h")
        if e.actor == "owner-notice" and e.outcome in ("unmarked", "unmark failed")
    ]


@pytest.fixture
def sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings_cache()
    return url


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    with SmtpPeer() as smtp, HttpPeer() as slack, HttpPeer() as hook:
        team_channel = {
            "name": "team-a-slack",
            "type": "slack",
            "target": slack.url + "/services/T0/B0/secret",
            "owners_only": True,
        }
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "EMAIL_FROM": "finops@example.com",
            "WEBHOOK_URL": hook.url,
            "CHANNELS": json.dumps([team_channel]),
            "OWNER_ROUTES": json.dumps({"Team-A": "team-a-slack"}),
            "ATTEMPTS": "1",
            "BACKOFF_SECONDS": "0",
            "TIMEOUT_SECONDS": "3",
        }.items():
            monkeypatch.setenv(f"FINOPS_NOTIFY_{name}", value)
        monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
        reset_notification_settings_cache()
        reset_settings_cache()
        upgrade()
        yield Peers(smtp, slack, hook)
    reset_notification_settings_cache()


def test_a_team_routed_to_slack_gets_a_slack_post_and_an_email_owner_mail(
    moto_url: str, sqlite: str, peers: Peers
) -> None:
    team = volume(moto_url, "team-a", "gp2")
    bob = volume(moto_url, "bob@example.com", "gp2")
    scan()
    result = plan(Clock())
    rows = actions()
    assert sorted(result.approved) == sorted([rows[team].id, rows[bob].id])
    assert all(SCHEDULED_TAG in tags_of(moto_url, v) for v in (team, bob))

    (post,) = peers.slack.posts  # the team's notice, in Slack's format
    assert post.path == "/services/T0/B0/secret"
    header, section, _ = post.json()["blocks"]
    assert header["text"]["text"].startswith(f"[P2] Planned: modify-volume {team} at ")
    assert "Owner: team-a" in section["text"]["text"]
    assert [m.rcpt_to for m in peers.smtp.mail] == [["bob@example.com"]]
    assert bob in peers.smtp.mail[0].message["Subject"]
    assert peers.hook.posts == []  # owner notices do not go to the shared channel
    notified = {
        e.subject_id: e.details["notice"]["recipient"]
        for e in AuditLogger().events("1h")
        if e.outcome == "notified"
    }
    assert notified == {
        str(rows[team].id): "team-a-slack (slack channel)",
        str(rows[bob].id): "bob@example.com",
    }


def test_the_mark_comes_off_after_the_action_succeeded(
    moto_url: str, any_database: str, peers: Peers
) -> None:
    modified = volume(moto_url, "bob@example.com", "gp2")
    deleted = volume(moto_url, "bob@example.com", "gp3")
    scan()
    t0 = Clock()
    plan(t0)
    rows = actions()
    assert all(SCHEDULED_TAG in tags_of(moto_url, v) for v in (modified, deleted))
    for row in rows.values():
        if row.state == "awaiting_approval":  # a deletion waits for a person
            with session_scope() as session:
                ActionPlanner(clock=t0.days(1.4)).approve(session, row.id, "alice")

    assert execute(t0.days(1.5)) == ["succeeded", "succeeded"]
    assert volume_type(moto_url, modified) == "gp3" and not exists(moto_url, deleted)
    assert SCHEDULED_TAG in tags_of(moto_url, modified)  # the action leaves its mark

    # the planner's sweep takes it off; the deleted volume has nothing to untag
    result = plan(t0.days(1.5))
    assert sorted(result.unmarked) == sorted([rows[modified].id, rows[deleted].id])
    assert SCHEDULED_TAG not in tags_of(moto_url, modified)
    assert volume_type(moto_url, modified) == "gp3"
    done = {e.details["resource"]: e.details["notice"] for e in mark_events()}
    assert done[modified]["why"] == done[deleted]["why"] == "action succeeded"
    assert done[deleted]["note"] == "resource gone: nothing to untag"
    assert "note" not in done[modified]
    assert plan(t0.days(2)).unmarked == []  # once only
    assert AuditLogger().verify().ok


def test_a_notice_that_does_not_commit_takes_its_mark_off_and_is_given_at_the_next_plan(
    moto_url: str, any_database: str, peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live plan commits its actions before their owners are told. A notice whose own
    transaction fails after the marking loses its mark; the action, never announced, cannot
    run, and the next plan gives its notice, with the grace period counted from then."""
    vid = volume(moto_url, "bob@example.com", "gp2")
    scan()
    with monkeypatch.context() as patched:

        def fail(*_args: Any, **_kwargs: Any) -> None:
            assert SCHEDULED_TAG in tags_of(moto_url, vid)  # AWS has it before the commit
            raise RuntimeError("the notice fails after marking")

        patched.setattr(NotificationService, "notify_owner", fail)
        with pytest.raises(RuntimeError, match="after marking"):
            plan(Clock())

    (row,) = actions().values()
    assert row.state == "approved"  # committed before the notice
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)
    (event,) = mark_events()
    assert event.outcome == "unmarked" and event.details["resource"] == vid
    assert event.details["notice"]["why"] == ROLLED_BACK
    assert peers.smtp.mail == []
    t1 = Clock().days(0.5)
    assert execute(t1.days(1)) == ["blocked"]  # never announced: execution refuses it
    assert AuditLogger().verify().ok


def test_an_action_planned_in_a_dry_run_is_announced_when_planning_goes_live(
    moto_url: str, any_database: str, peers: Peers
) -> None:
    vid = volume(moto_url, "bob@example.com", "gp2")
    scan()
    t0 = Clock()
    with session_scope() as session:
        dry = ActionPlanner(clock=t0).plan(session, pack(), requested_by="planner")
    assert len(dry.approved) == 1 and peers.smtp.mail == []
    t1 = t0.days(0.5)
    live = plan(t1)
    (row,) = actions().values()
    assert live.created == [] and live.existing == 1 and live.blocked == {}
    assert [m.rcpt_to for m in peers.smtp.mail] == [["bob@example.com"]]
    assert tags_of(moto_url, vid)[SCHEDULED_TAG].endswith(f"(action {row.id})")
    assert row.state == "approved" and row.not_before == t1.now + dt.timedelta(days=1)
    assert plan(t1).existing == 1 and len(peers.smtp.mail) == 1  # told once
    assert execute(t1.days(0.9)) == []  # the grace period runs from the notice
    assert execute(t1.days(1.1)) == ["succeeded"]
    assert volume_type(moto_url, vid) == "gp3"


def test_the_sweep_removes_a_mark_whose_action_never_committed(
    moto_url: str, sqlite: str, peers: Peers
) -> None:
    # As a planner that died between marking and rolling back would leave it.
    orphan = volume(moto_url, "bob@example.com")
    handmade = volume(moto_url, "bob@example.com")
    for vid, value in ((orphan, "delete on 2030-01-01 (action 41)"), (handmade, "keep me")):
        ec2(moto_url).create_tags(Resources=[vid], Tags=[{"Key": SCHEDULED_TAG, "Value": value}])
    scan()  # the inventory learns the marks

    assert unmark() == [41]
    assert SCHEDULED_TAG not in tags_of(moto_url, orphan)
    assert tags_of(moto_url, handmade)[SCHEDULED_TAG] == "keep me"  # not ours: left alone
    (event,) = mark_events()
    assert (event.subject_id, event.details["resource"]) == ("41", orphan)
    assert event.details["notice"]["why"].startswith("no action 41")
    assert unmark() == []
    assert AuditLogger().verify().ok


def test_an_unmark_that_fails_is_audited_and_retried(
    moto_url: str, sqlite: str, peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    vid = volume(moto_url, "bob@example.com")
    value = "delete on 2030-01-01 (action 7)"
    ec2(moto_url).create_tags(Resources=[vid], Tags=[{"Key": SCHEDULED_TAG, "Value": value}])
    scan()
    refusing = [True]
    remove_tag = operations_tags.remove_tag

    def flaky(*args: Any, **kwargs: Any) -> None:
        if refusing[0]:
            raise RuntimeError("DeleteTags refused")
        remove_tag(*args, **kwargs)

    monkeypatch.setattr(operations_tags, "remove_tag", flaky)
    assert unmark() == []
    (failed,) = mark_events()
    assert failed.outcome == "unmark failed"
    assert "DeleteTags refused" in failed.details["notice"]["error"]
    assert tags_of(moto_url, vid)[SCHEDULED_TAG] == value

    refusing[0] = False  # the next sweep tries again
    assert unmark() == [7]
    assert SCHEDULED_TAG not in tags_of(moto_url, vid)
