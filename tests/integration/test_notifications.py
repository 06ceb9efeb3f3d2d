"""NotificationService against real peers: HTTP servers that record or fail, an SMTP server."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import SettingsError
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import NotificationRow
from backend.core.notification_channels import Message, Receipt
from backend.core.notification_service import NotificationService
from backend.core.notification_settings import (
    ChannelConfig,
    NotificationSettings,
    load_notification_settings,
    reset_notification_settings_cache,
)
from backend.core.types import utcnow
from tests.support.peers import HttpPeer, SmtpPeer
from tests.support.servers import free_port

SECRET_PATH = "/services/T000/B000/s3cr3t-token"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def fresh_notification_settings() -> Iterator[None]:
    reset_notification_settings_cache()
    yield
    reset_notification_settings_cache()


@pytest.fixture
def db(any_database: str) -> str:
    upgrade()
    return any_database


def fast(**values: Any) -> NotificationSettings:
    """Settings with quick in-process retries, so that failing peers cost milliseconds."""
    defaults: dict[str, Any] = {
        "attempts": 3,
        "backoff_seconds": 0.01,
        "timeout_seconds": 3,
        "retry_after_seconds": 60,
    }
    return load_notification_settings(**(defaults | values))


def webhook(name: str, url: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "target": url, **more}


def echoed(out: str) -> list[str]:
    """The runbook lines, without structlog's (unconfigured, it also prints to stdout)."""
    return [line for line in out.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]


def rows() -> list[NotificationRow]:
    with session_scope() as session:
        return list(session.scalars(select(NotificationRow).order_by(NotificationRow.id)))


def test_slack_and_webhook_payloads(db: str) -> None:
    with HttpPeer() as slack, HttpPeer() as hook:
        settings = fast(slack_webhook_url=slack.url + SECRET_PATH, webhook_url=hook.url + "/in")
        results = NotificationService(settings=settings).send_failure(
            "Policy stop-idle failed in us-east-1\nAccessDenied on ec2:StopInstances", "P1"
        )

    assert [(r.channel, r.status, r.code, r.attempts) for r in results] == [
        ("slack", "sent", "200", 1),
        ("webhook", "sent", "200", 1),
    ]
    (post,) = slack.posts
    assert post.path == SECRET_PATH
    assert post.headers["Content-Type"] == "application/json"
    payload = post.json()
    assert payload["text"].endswith("[P1] Policy stop-idle failed in us-east-1")
    header, section, context = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "[P1] Policy stop-idle failed in us-east-1"},
    }
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "AccessDenied on ec2:StopInstances" in section["text"]["text"]
    assert context["type"] == "context" and "*P1*" in context["elements"][0]["text"]
    event = hook.posts[0].json()
    assert (event["severity"], event["category"]) == ("P1", "failure")
    assert event["notification_id"] == results[1].notification_id
    stored = rows()
    assert [(r.channel, r.status, r.attempts, r.last_error) for r in stored] == [
        ("slack", "sent", 1, None),
        ("webhook", "sent", 1, None),
    ]
    assert all(r.sent_at is not None and r.next_attempt_at is None for r in stored)


def test_a_500_then_200_is_retried_and_delivered(db: str) -> None:
    with HttpPeer(script=[500]) as hook:
        (result,) = NotificationService(settings=fast(webhook_url=hook.url)).send_failure("x", "P2")

    assert (result.status, result.attempts, len(hook.posts)) == ("sent", 2, 2)
    assert "2 attempts" in result.line()
    (row,) = rows()
    assert (row.status, row.attempts, row.last_error) == ("sent", 2, None)


def test_failing_channel_is_kept_others_delivered_and_retried_later(db: str) -> None:
    clock = Clock()
    with HttpPeer(status=500) as broken, HttpPeer() as slack, SmtpPeer() as smtp:
        settings = fast(
            channels=json.dumps([webhook("ops", broken.url + SECRET_PATH)]),
            slack_webhook_url=slack.url,
            email_to="finops@example.com",
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            email_from="finops-bot@example.com",
        )
        service = NotificationService(settings=settings, clock=clock)
        results = {r.channel: r for r in service.send_failure("Rollback failed", "P1")}

        assert results["ops"].status == "failed"
        assert results["ops"].attempts == 3 and len(broken.posts) == 3
        assert results["ops"].error == f"HTTP 500 from {broken.url}: peer error"
        assert results["slack"].delivered and results["email"].delivered
        assert [m.rcpt_to for m in smtp.mail] == [["finops@example.com"]]
        failed = service.failed_notifications(hours=1)
        assert [(f.channel, f.status, f.attempts) for f in failed] == [("ops", "failed", 3)]
        assert failed[0].next_attempt_at == clock.now + dt.timedelta(seconds=60)
        assert SECRET_PATH not in (failed[0].last_error or "")

        assert service.retry_pending() == []  # not due yet
        broken.set_status(200)
        clock.advance(61)
        (retried,) = service.retry_pending()

    assert (retried.channel, retried.status, retried.attempts) == ("ops", "sent", 1)
    assert broken.posts[-1].json()["subject"] == "Rollback failed"
    assert service.failed_notifications(hours=1) == []
    ops = next(r for r in rows() if r.channel == "ops")
    assert (ops.status, ops.attempts, ops.last_error, ops.next_attempt_at) == (
        "sent",
        4,
        None,
        None,
    )
    assert len(slack.posts) == 1  # delivered channels are not sent again


def test_a_crashing_sender_does_not_stop_the_other_channels(db: str) -> None:
    class Broken:
        def send(self, channel: ChannelConfig, message: Message) -> Receipt:
            raise RuntimeError("boom")

    with HttpPeer() as slack:
        settings = fast(slack_webhook_url=slack.url, webhook_url="http://127.0.0.1:9/x")
        service = NotificationService(settings=settings, senders={"webhook": Broken()})
        results = service.send_failure("disk full", "P2")

    assert [(r.channel, r.status, r.error) for r in results] == [
        ("slack", "sent", None),
        ("webhook", "failed", "RuntimeError: boom"),
    ]


def test_emergency_alert_reaches_every_emergency_channel(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with HttpPeer() as pager, HttpPeer() as ops, HttpPeer() as chat:
        channels = [
            {"name": "pager", "type": "slack", "target": pager.url, "emergency": True},
            webhook("ops", ops.url, severities=["P2"], emergency=True),
            webhook("chat", chat.url),
        ]
        service = NotificationService(settings=fast(channels=json.dumps(channels)))
        results = service.send_emergency_alert("Automation system emergency stop activated")
        assert [(r.channel, r.status) for r in results] == [("pager", "sent"), ("ops", "sent")]
        assert chat.posts == []
        assert pager.posts[0].json()["blocks"][0]["text"]["text"].startswith("[P0] EMERGENCY")
        assert ops.posts[0].json()["severity"] == "P0"

        # None marked: every channel is an emergency channel.
        unmarked = [webhook("ops", ops.url, severities=["P2"]), webhook("chat", chat.url)]
        service = NotificationService(settings=fast(channels=json.dumps(unmarked)))
        service.send_emergency_alert("second", echo_result=False)
        assert (len(ops.posts), len(chat.posts)) == (2, 1)

    out = echoed(capsys.readouterr().out)
    assert out[0] == "emergency alert: Automation system emergency stop activated"
    assert re.fullmatch(r"  pager ok \(200 in \d+\.\d\ds\)", out[1])
    assert re.fullmatch(r"  ops ok \(200 in \d+\.\d\ds\)", out[2])
    assert len(out) == 3


def test_routing_by_severity_and_the_run_report(db: str) -> None:
    with HttpPeer() as pager, HttpPeer() as chat:
        channels = [
            webhook("pager", pager.url, severities=["P0"]),
            webhook("chat", chat.url, severities="P1,P2"),
        ]
        service = NotificationService(settings=fast(channels=json.dumps(channels)))
        service.send_failure("one action failed", "P2")
        service.send_failure("safety checks failing on production", "P0")
        report = {
            "run_id": 7,
            "dry_run": False,
            "executed": 1,
            "failed": 3,
            "blocked": 2,
            "estimated_monthly_savings": 1234.5,
            "done": ["stopped i-0abc (saves $30.00/month)"],
            "blocked_reasons": ["vol-1: tagged env=prod"],
        }
        (reported,) = service.send_run_report(report)

    assert [p.json()["subject"] for p in pager.posts] == ["safety checks failing on production"]
    assert reported.channel == "chat" and reported.delivered
    sent = chat.posts[-1].json()
    assert sent["severity"] == "P1"  # most actions failed: the runbook's P1
    assert sent["subject"] == "run 7 (live): 1 done, 3 failed, 2 blocked, $1,234.50/month"
    assert "- stopped i-0abc (saves $30.00/month)" in sent["body"]
    assert "- vol-1: tagged env=prod" in sent["body"]
    assert (
        NotificationService(settings=fast(channels=json.dumps(channels[:1])))
        .send_failure("minor", "P2")[0]
        .status
        == "logged"
    )  # no channel takes P2: kept in the database


def test_owner_notices_go_to_the_owner_or_the_fallback(db: str) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
    with SmtpPeer() as smtp:
        smtp_settings: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_user": "bot",
            "smtp_password": "pw",
            "email_from": "finops-bot@example.com",
        }
        service = NotificationService(
            settings=fast(fallback_contact="finops-team@example.com", **smtp_settings)
        )
        (to_owner,) = service.notify_owner(
            "i-0abc", "alice@example.com", "stop", when, {"policy": "stop-idle"}
        )
        (to_fallback,) = service.notify_owner("vol-1", {"Owner": "team-x"}, "delete", when)
        lonely = NotificationService(settings=fast(**smtp_settings))
        (nobody,) = lonely.notify_owner("vol-2", None, "delete", when)

    assert to_owner.delivered and to_owner.recipient == "alice@example.com"
    assert to_fallback.delivered and to_fallback.recipient == "finops-team@example.com"
    assert (
        to_fallback.note
        == "owner tag 'team-x' is not an email address: sent to the fallback contact"
    )
    assert (nobody.status, nobody.delivered) == ("no_recipient", False)
    assert (
        nobody.error == "no recipient: no owner tag, and FINOPS_NOTIFY_FALLBACK_CONTACT is not set"
    )
    assert [m.rcpt_to for m in smtp.mail] == [["alice@example.com"], ["finops-team@example.com"]]
    first = smtp.mail[0].message
    assert first["Subject"] == "[FinOps P2] Planned: stop i-0abc at 2030-01-02 03:04 UTC"
    assert first["From"] == "finops-bot@example.com"
    assert "policy: stop-idle" in first.get_content()
    assert smtp.logins == [("bot", "pw"), ("bot", "pw")]
    kept = rows()[-1]
    assert (kept.channel, kept.status, kept.next_attempt_at) == ("owner-email", "failed", None)
    assert lonely.retry_pending() == []  # nobody to send it to: never retried


def test_owner_routes_send_a_team_to_its_channel_and_nowhere_else(db: str) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
    with HttpPeer(script=[500]) as team, HttpPeer() as shared, SmtpPeer() as smtp:
        channels = [
            {"name": "team-x-slack", "type": "slack", "target": team.url, "owners_only": True},
            webhook("ops", shared.url),
        ]
        settings = fast(
            channels=json.dumps(channels),
            owner_routes=json.dumps({" Team-X": "team-x-slack", "team-y": "lead@example.com"}),
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            email_from="finops-bot@example.com",
            attempts=1,
        )
        clock = Clock()
        service = NotificationService(settings=settings, clock=clock)
        # a tag dict: the routed owner wins over an address that has no route
        (to_team,) = service.notify_owner(
            "vol-1", {"Owner": "team-X", "contact": "x@example.com"}, "delete", when
        )
        (to_lead,) = service.notify_owner("vol-2", "team-y", "stop", when)
        service.send_failure("a run failed", "P2")
        service.send_emergency_alert("stop", echo_result=False)
        assert (to_team.channel, to_team.status) == ("team-x-slack", "failed")  # the 500
        clock.advance(3600)
        # A failed owner notice is not sent late on its own: it blocked its action, and
        # planning the action again gives a new notice, with a date that still holds.
        assert service.retry_pending() == []

    (first,) = (post.json() for post in team.posts)
    assert (
        first["blocks"][0]["text"]["text"] == "[P2] Planned: delete vol-1 at 2030-01-02 03:04 UTC"
    )
    assert "Owner: team-X" in first["blocks"][1]["text"]["text"]
    assert (to_lead.channel, to_lead.recipient, to_lead.delivered) == (
        "owner-email",
        "lead@example.com",
        True,
    )
    assert [m.rcpt_to for m in smtp.mail] == [["lead@example.com"]]
    # the team's channel carries owner notices only; the shared one everything else
    assert [p.json()["category"] for p in shared.posts] == ["failure", "emergency"]


def test_an_owner_without_route_or_address_is_told_nothing(db: str) -> None:
    settings = fast(
        channels=json.dumps([webhook("ops", "http://127.0.0.1:9/")]),
        owner_routes=json.dumps({"team-x": "ops"}),
    )
    (result,) = NotificationService(settings=settings).notify_owner(
        "vol-1", "team-z", "delete", utcnow()
    )
    assert result.status == "no_recipient"
    assert result.error == (
        "no recipient: owner tag 'team-z' is not an email address and has no owner route, "
        "and FINOPS_NOTIFY_FALLBACK_CONTACT is not set"
    )


def test_test_all_channels_prints_one_line_per_channel(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed_port = free_port()
    with HttpPeer() as slack:
        settings = fast(
            slack_webhook_url=slack.url,
            email_to="finops@example.com",
            smtp_host="127.0.0.1",
            smtp_port=closed_port,
            email_from="finops-bot@example.com",
        )
        results = NotificationService(settings=settings).test_all_channels()

    lines = echoed(capsys.readouterr().out)
    assert re.fullmatch(r"slack ok \(200 in \d+\.\d\ds\)", lines[0])
    assert lines[1] == f"email FAILED: connection refused to 127.0.0.1:{closed_port}"
    assert [r.status for r in results] == ["sent", "failed"]
    assert rows()[-1].next_attempt_at is None  # a failed test message is not sent again


def test_without_channels_messages_stay_in_the_database(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The runbook's calls, configured from the (empty) environment.
    NotificationService().send_emergency_alert("Automation system emergency stop activated")
    NotificationService().test_all_channels()

    out = capsys.readouterr().out
    assert "  log ok (kept in the database only); no notification channel configured" in out
    assert "FINOPS_NOTIFY_SLACK_WEBHOOK_URL" in out
    assert [(r.channel, r.severity, r.status) for r in rows()] == [
        ("log", "P0", "sent"),
        ("log", "P2", "sent"),
    ]


def test_an_unreachable_database_does_not_stop_an_alert(any_database: str) -> None:
    # No migration: the table is missing, as when the database is the emergency.
    with HttpPeer() as slack:
        service = NotificationService(settings=fast(slack_webhook_url=slack.url))
        (result,) = service.send_emergency_alert("database down", echo_result=False)

    assert result.delivered and len(slack.posts) == 1
    assert result.note is not None and result.note.startswith("not recorded in the database")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FINOPS_NOTIFY_CHANNELS", "[{", "FINOPS_NOTIFY_CHANNELS: not valid JSON"),
        (
            "FINOPS_NOTIFY_CHANNELS",
            '[{"name": "x", "type": "sms", "target": "https://h/s3cr3t-token"}]',
            "FINOPS_NOTIFY_CHANNELS[0].type: Input should be 'slack', 'webhook' or 'email'",
        ),
        (
            "FINOPS_NOTIFY_CHANNELS",
            '[{"name": "x", "type": "slack", "target": "ftp://h/s3cr3t-token"}]',
            "FINOPS_NOTIFY_CHANNELS[0]: target: a slack channel needs an http(s):// URL",
        ),
        (
            "FINOPS_NOTIFY_SLACK_WEBHOOK_URL",
            "hooks.slack.com/s3cr3t-token",
            "FINOPS_NOTIFY_SLACK_WEBHOOK_URL: a slack channel needs an http(s):// URL",
        ),
        ("FINOPS_NOTIFY_SMTP_PORT", "smtp", "FINOPS_NOTIFY_SMTP_PORT: Input should be"),
        (
            "FINOPS_NOTIFY_EMAIL_TO",
            "ops@example.com",
            "FINOPS_NOTIFY_SMTP_HOST: an email channel needs an SMTP server",
        ),
        ("FINOPS_NOTIFY_FALLBACK_CONTACT", "team-x", "FINOPS_NOTIFY_FALLBACK_CONTACT: not an"),
        (
            "FINOPS_NOTIFY_OWNER_ROUTES",
            '{"team-x": "team-x-slack"}',
            "FINOPS_NOTIFY_OWNER_ROUTES: 'team-x' goes to 'team-x-slack', which is neither",
        ),
        ("FINOPS_NOTIFY_OWNER_ROUTES", '["team-x"]', "FINOPS_NOTIFY_OWNER_ROUTES: a JSON object"),
        (
            "FINOPS_NOTIFY_CHANNELS",
            '[{"name": "t", "type": "slack", "target": "https://h/s3cr3t-token",'
            ' "owners_only": true, "emergency": true}]',
            "FINOPS_NOTIFY_CHANNELS[0]: emergency: an owners_only channel takes no emergency",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        NotificationService().send_emergency_alert("stop")
    assert expected in str(raised.value)
    assert "s3cr3t-token" not in str(raised.value)


def test_settings_from_simple_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/x")
    monkeypatch.setenv("FINOPS_NOTIFY_EMAIL_TO", "a@example.com, b@example.com")
    monkeypatch.setenv("FINOPS_NOTIFY_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("FINOPS_NOTIFY_SMTP_STARTTLS", "true")
    monkeypatch.setenv("FINOPS_NOTIFY_EMAIL_FROM", "finops@example.com")
    monkeypatch.setenv(
        "FINOPS_NOTIFY_CHANNELS",
        '[{"name": "pager", "type": "webhook", "target": "https://pager.example.com/hook",'
        ' "severities": ["P0"], "emergency": true}]',
    )
    service = NotificationService()
    assert [(c.name, c.type, c.severities, c.emergency) for c in service.channels()] == [
        ("pager", "webhook", ("P0",), True),
        ("slack", "slack", ("P0", "P1", "P2"), False),
        ("email", "email", ("P0", "P1", "P2"), False),
    ]
    assert service.settings.smtp_starttls and service.settings.smtp_port == 25
    assert service.channels()[1].display_target == "https://hooks.slack.com"
