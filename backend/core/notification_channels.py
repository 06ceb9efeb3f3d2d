"""The senders (a Slack incoming webhook, a generic JSON webhook, email over SMTP), the texts
they carry, and the per-channel results.

A sender makes one attempt and either returns a Receipt or raises DeliveryError, which says
whether trying again soon may help (a 5xx, a refused connection) or not (a 404, a rejected
recipient). Retrying and bookkeeping belong to the NotificationService. HTTP uses the
standard library's urllib: httpx is not a dependency of the project.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal, Protocol

from backend.core.models import NotificationRow
from backend.core.notification_settings import (
    ChannelConfig,
    NotificationSettings,
    safe_url,
    split_addresses,
)

USER_AGENT = "finops-automation-notifier/1"
_EMOJI = {"P0": ":rotating_light:", "P1": ":warning:", "P2": ":information_source:"}


@dataclass(frozen=True)
class Message:
    """What is sent; everything in it is kept on the NotificationRow, so a retry can rebuild it."""

    severity: str
    category: str
    subject: str
    body: str
    recipient: str | None = None  # overrides the channel's target (owner notices)
    notification_id: int | None = None


@dataclass(frozen=True)
class Receipt:
    code: str  # what the peer answered: "200", "250"


class DeliveryError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Sender(Protocol):
    def send(self, channel: ChannelConfig, message: Message) -> Receipt: ...


def slack_payload(message: Message) -> dict[str, Any]:
    """Slack's incoming-webhook format: `text` is the fallback for notifications, `blocks` shows."""
    title = f"[{message.severity}] {message.subject}"
    context = f"*{message.severity}* | {message.category} | FinOps Automation"
    if message.notification_id is not None:
        context += f" | notification {message.notification_id}"
    return {
        "text": _clip(f"{_EMOJI.get(message.severity, '')} {title}".strip(), 3000),
        "blocks": [
            # Slack limits: header text 150 characters, section text 3000.
            {"type": "header", "text": {"type": "plain_text", "text": _clip(title, 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(message.body, 3000)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def webhook_payload(message: Message) -> dict[str, Any]:
    return {
        "source": "finops-automation",
        "notification_id": message.notification_id,
        "severity": message.severity,
        "category": message.category,
        "subject": message.subject,
        "body": message.body,
        "recipient": message.recipient,
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_os_error(exc: BaseException, where: str) -> str:
    """'connection refused to smtp:25', 'timed out talking to ...': short, for a person."""
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused to {where}"
    if isinstance(exc, TimeoutError):
        return f"timed out talking to {where}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {where}"
    if isinstance(exc, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error with {where}: {exc.reason or exc}"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{reason} ({where})"


def post_json(url: str, payload: Mapping[str, Any], timeout: float) -> Receipt:
    """POST a JSON document; any answer but 2xx raises DeliveryError."""
    where = safe_url(url)
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(4096)
            return Receipt(str(response.status))
    except urllib.error.HTTPError as exc:
        detail = _read_snippet(exc)
        # 408/429 and 5xx may pass; any other 4xx means the request itself is refused.
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(
            f"HTTP {exc.code} from {where}" + (f": {detail}" if detail else ""),
            transient=transient,
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = (
            describe_os_error(reason, where)
            if isinstance(reason, BaseException)
            else f"{reason} ({where})"
        )
        raise DeliveryError(text, transient=True) from None
    except (OSError, ValueError) as exc:  # timeouts while reading; http.client errors
        raise DeliveryError(describe_os_error(exc, where), transient=True) from None


def _read_snippet(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(200).decode("utf-8", "replace").strip().replace("\n", " ")
    except OSError:
        return ""


class SlackSender:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def send(self, channel: ChannelConfig, message: Message) -> Receipt:
        return post_json(channel.target, slack_payload(message), self.timeout)


class WebhookSender:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def send(self, channel: ChannelConfig, message: Message) -> Receipt:
        return post_json(channel.target, webhook_payload(message), self.timeout)


class EmailSender:
    """One SMTP session per message, through the configured server."""

    def __init__(self, settings: NotificationSettings) -> None:
        self.settings = settings

    def send(self, channel: ChannelConfig, message: Message) -> Receipt:
        s = self.settings
        if not s.smtp_host or not s.email_from:
            raise DeliveryError(
                "no SMTP server configured (FINOPS_NOTIFY_SMTP_HOST, FINOPS_NOTIFY_EMAIL_FROM)",
                transient=False,
            )
        recipients = split_addresses(message.recipient or channel.target)
        where = f"{s.smtp_host}:{s.smtp_port}"
        email = build_email(message, s.email_from, recipients)
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_seconds) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_user and s.smtp_password is not None:
                    smtp.login(s.smtp_user, s.smtp_password.get_secret_value())
                refused = smtp.send_message(email, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"{where} refused every recipient: {_refusals(exc.recipients)}", transient=False
            ) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{where} refused the login of FINOPS_NOTIFY_SMTP_USER: {_smtp_text(exc)}",
                transient=False,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc}", transient=False) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx: try again later; 5xx: the server will not take this message.
            raise DeliveryError(
                f"{where} answered {exc.smtp_code} {_smtp_text(exc)}",
                transient=400 <= exc.smtp_code < 500,
            ) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise DeliveryError(f"{where} disconnected: {exc}", transient=True) from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"{where}: {exc}", transient=True) from None
        except ssl.SSLError as exc:  # a certificate problem does not pass with time
            raise DeliveryError(describe_os_error(exc, where), transient=False) from None
        except OSError as exc:
            raise DeliveryError(describe_os_error(exc, where), transient=True) from None
        if refused:
            return Receipt(f"250, refused {_refusals(refused)}")
        return Receipt("250")


def build_email(message: Message, sender: str, recipients: list[str]) -> EmailMessage:
    email = EmailMessage()
    email["From"] = sender
    email["To"] = ", ".join(recipients)
    email["Subject"] = f"[FinOps {message.severity}] {message.subject}"
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1])
    email["X-FinOps-Severity"] = message.severity
    email["X-FinOps-Category"] = message.category
    if message.notification_id is not None:
        email["X-FinOps-Notification-Id"] = str(message.notification_id)
    email.set_content(message.body)
    return email


def _smtp_text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


def _refusals(recipients: Mapping[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{address} ({code} {text.decode('utf-8', 'replace')})"
        for address, (code, text) in recipients.items()
    )


def default_senders(settings: NotificationSettings) -> dict[str, Sender]:
    """One sender per channel type, built from the settings."""
    return {
        "slack": SlackSender(settings.timeout_seconds),
        "webhook": WebhookSender(settings.timeout_seconds),
        "email": EmailSender(settings),
    }


# Results and message texts ----------------------------------------------------------------

DeliveryStatus = Literal["sent", "failed", "logged", "no_recipient"]


@dataclass(frozen=True)
class DeliveryResult:
    """What happened on one channel. `logged`: no channel, kept in the database only."""

    channel: str
    status: DeliveryStatus
    notification_id: int | None = None
    channel_type: str = "log"
    recipient: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    code: str | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None
    note: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status == "sent"

    @property
    def ok(self) -> bool:
        return self.status in ("sent", "logged")

    def line(self) -> str:
        """'slack ok (200 in 0.12s)', 'email FAILED: connection refused to smtp:25'."""
        if self.status == "sent":
            tries = f", {self.attempts} attempts" if self.attempts > 1 else ""
            text = f"{self.channel} ok ({self.code} in {self.seconds:.2f}s{tries})"
        elif self.status == "logged":
            text = f"{self.channel} ok (kept in the database only)"
        elif self.status == "no_recipient":
            text = f"{self.channel} NOT SENT: {self.error}"
        else:
            text = f"{self.channel} FAILED: {self.error}"
            if self.next_attempt_at is not None:
                text += f" (retried from {self.next_attempt_at:%H:%M:%S} UTC)"
        return f"{text}; {self.note}" if self.note else text


@dataclass(frozen=True)
class NotificationRecord:
    id: int
    channel: str
    severity: str
    category: str
    recipient: str | None
    subject: str
    status: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: NotificationRow) -> NotificationRecord:
        return cls(
            row.id, row.channel, row.severity, row.category, row.recipient, row.subject,
            row.status, row.attempts, row.last_error, row.created_at, row.next_attempt_at,
            row.sent_at,
        )  # fmt: skip


@dataclass(frozen=True)
class RunReport:
    """A run's summary: counts, savings, and a few lines on what was done and blocked."""

    run_id: int | None = None
    dry_run: bool = True
    executed: int = 0
    failed: int = 0
    blocked: int = 0
    awaiting_approval: int = 0
    estimated_monthly_savings: float = 0.0
    realized_monthly_savings: float | None = None
    done: Sequence[str] = ()
    blocked_reasons: Sequence[str] = ()

    @property
    def severity(self) -> str:
        # The runbook: more than half of the actions failing is P1, single failures P2.
        attempted = self.executed + self.failed
        return "P1" if self.failed and self.failed * 2 > attempted else "P2"


def run_report_message(report: RunReport) -> Message:
    mode = "dry run" if report.dry_run else "live"
    run = f"run {report.run_id}" if report.run_id is not None else "run"
    subject = (
        f"{run} ({mode}): {report.executed} done, {report.failed} failed, "
        f"{report.blocked} blocked, ${report.estimated_monthly_savings:,.2f}/month"
    )
    lines = [
        f"Actions executed: {report.executed}",
        f"Actions failed: {report.failed}",
        f"Actions blocked by safety checks: {report.blocked}",
        f"Awaiting approval: {report.awaiting_approval}",
        f"Estimated savings: ${report.estimated_monthly_savings:,.2f}/month",
    ]
    if report.realized_monthly_savings is not None:
        lines.append(f"Realized savings: ${report.realized_monthly_savings:,.2f}/month")
    lines += _section("Done", report.done) + _section("Blocked", report.blocked_reasons)
    return Message(report.severity, "run_report", subject, "\n".join(lines))


def _section(title: str, items: Sequence[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    shown = [f"- {item}" for item in items[:limit]]
    more = [f"- ... and {len(items) - limit} more"] if len(items) > limit else []
    return ["", f"{title}:", *shown, *more]


def owner_notice(
    resource_id: str,
    action: str,
    when: dt.datetime,
    details: Mapping[str, Any] | str | None,
    *,
    owner: str | None = None,
) -> tuple[str, str]:
    at = f"{when.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    lines = [
        f"FinOps Automation plans to {action} {resource_id} at {at} or later.",
        "",
        f"Resource: {resource_id}",
        *([f"Owner: {owner}"] if owner else []),  # a team channel reads whose it is
        f"Action: {action}",
        f"Not before: {at}",
    ]
    if isinstance(details, str):
        lines += ["", details]
    elif details:
        lines += ["", *(f"{key}: {value}" for key, value in details.items())]
    lines += [
        "",
        "To keep this resource as it is, tag it with the opt-out tag (finops:opt-out by "
        "default) before then, or reply to the FinOps team.",
    ]
    return f"Planned: {action} {resource_id} at {at}", "\n".join(lines)
