"""NotificationService: who is told what, kept in the database until it is sent.

Every message becomes one NotificationRow per channel, committed as `pending` before anything
is sent; then each channel is tried a few times in-process (tenacity). A row that still fails
is marked `failed` with its error and a `next_attempt_at`, and `retry_pending()` tries again
later. A channel failure never raises and never stops the other channels: each method returns
one DeliveryResult per channel. Notifications are delivered at least once: if recording a
success fails, the row is sent again when its lease runs out.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from backend.core.database import error_cause, session_factory
from backend.core.models import NotificationRow
from backend.core.notification_channels import (
    DeliveryError,
    DeliveryResult,
    Message,
    NotificationRecord,
    Receipt,
    RunReport,
    Sender,
    default_senders,
    owner_notice,
    run_report_message,
)
from backend.core.notification_settings import (
    LOG_CHANNEL,
    OWNER_CHANNEL,
    SEVERITIES,
    ChannelConfig,
    NotificationSettings,
    get_notification_settings,
    owner_channel,
)
from backend.core.runbook_output import echo
from backend.core.types import utcnow

log = structlog.get_logger(__name__)

_NO_CHANNEL = (
    "no notification channel configured: set FINOPS_NOTIFY_SLACK_WEBHOOK_URL, "
    "FINOPS_NOTIFY_WEBHOOK_URL, FINOPS_NOTIFY_EMAIL_TO or FINOPS_NOTIFY_CHANNELS"
)
_MAX_DELAY = dt.timedelta(days=1)


@dataclass
class _Attempt:
    channel: ChannelConfig
    message: Message
    receipt: Receipt | None = None
    error: str | None = None
    tries: int = 0
    seconds: float = 0.0


class NotificationService:
    def __init__(
        self,
        *,
        settings: NotificationSettings | None = None,
        database_url: str | None = None,
        sessions: Callable[[], Session] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        senders: Mapping[str, Sender] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._database_url = database_url
        self._session_factory = sessions
        self._clock = clock
        self._sender_overrides = dict(senders or {})
        self._sleep = sleep

    @property
    def settings(self) -> NotificationSettings:
        # Read on first use, so that importing or constructing never fails on configuration.
        if self._settings is None:
            self._settings = get_notification_settings()
        return self._settings

    def channels(self) -> list[ChannelConfig]:
        """Every channel, the owners-only ones included (they are tested and retried too)."""
        return self.settings.all_channels()

    def _shared(self) -> list[ChannelConfig]:
        return [c for c in self.channels() if not c.owners_only]

    # The messages -------------------------------------------------------------------------

    def send_emergency_alert(self, text: str, *, echo_result: bool = True) -> list[DeliveryResult]:
        """P0 to every channel marked `emergency`, or, if none is, to every shared channel."""
        targets = [c for c in self.channels() if c.emergency] or self._shared()
        body = f"{text}\n\n{self._stamp()}"
        message = Message("P0", "emergency", _first_line(f"EMERGENCY: {text}"), body)
        results = self._dispatch(message, targets)
        if echo_result:
            echo(f"emergency alert: {_first_line(text)}")
            for result in results:
                echo(f"  {result.line()}")
        return results

    def notify_owner(
        self,
        resource_id: str,
        owner: str | Mapping[str, str] | None,
        action: str,
        when: dt.datetime,
        details: Mapping[str, Any] | str | None = None,
    ) -> list[DeliveryResult]:
        """Tell a resource's owner: by the owner's route (a team's Slack or webhook channel, or
        an address), else to the email address in the owner tag, else the fallback contact.

        The caller must not act unless the result is `delivered`: with no owner address and
        no fallback contact the result says `no_recipient`.
        """
        route = self.settings.owner_route(owner)
        subject, body = owner_notice(resource_id, action, when, details, owner=route.owner)
        message = Message("P2", "owner_notice", subject, body, recipient=route.recipient)
        if route.channel is None:
            return [self._no_recipient(message, route.note or "no owner")]
        # Not retried later on its own: a failed notice blocks its action, and planning it
        # again gives a new notice (with a new date); a late copy of this one would be a
        # second notice, with a date that no longer holds.
        sent = self._dispatch(message, [route.channel], retry_later=False)
        return [replace(r, note=route.note) for r in sent]

    def send_run_report(self, summary: RunReport | Mapping[str, Any]) -> list[DeliveryResult]:
        """What a run did, saved and blocked; P1 when most of its actions failed."""
        report = summary if isinstance(summary, RunReport) else RunReport(**summary)
        message = run_report_message(report)
        return self._dispatch(message, self._routed(message.severity))

    def send_failure(self, text: str, severity: str = "P1") -> list[DeliveryResult]:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        message = Message(severity, "failure", _first_line(text), text)
        return self._dispatch(message, self._routed(severity))

    def test_all_channels(self) -> list[DeliveryResult]:
        """Send a test message to each channel and print one line per channel."""
        body = f"Test message from FinOps Automation: this channel works.\n{self._stamp()}"
        message = Message("P2", "test", "FinOps Automation notification test", body)
        results = self._dispatch(message, self.channels(), retry_later=False)
        for result in results:
            echo(result.line())
        return results

    # Health and later delivery ------------------------------------------------------------

    def failed_notifications(self, hours: float = 24) -> list[NotificationRecord]:
        since = self._clock() - dt.timedelta(hours=hours)
        with self._transaction() as session:
            rows = session.scalars(
                select(NotificationRow)
                .where(NotificationRow.status == "failed", NotificationRow.created_at >= since)
                .order_by(NotificationRow.created_at.desc(), NotificationRow.id.desc())
            ).all()
            return [NotificationRecord.from_row(row) for row in rows]

    def retry_pending(self, limit: int = 100) -> list[DeliveryResult]:
        """Send again the rows that are due: failed ones, and pending ones whose sender died."""
        now = self._clock()
        due = (
            NotificationRow.status.in_(("pending", "failed")),
            NotificationRow.next_attempt_at <= now,
        )
        first = select(NotificationRow.id).where(*due).order_by(NotificationRow.next_attempt_at)
        with self._transaction() as session:
            # One atomic UPDATE claims the rows (a new lease), so two workers never share one.
            rows = session.scalars(
                update(NotificationRow)
                .where(NotificationRow.id.in_(first.limit(limit).scalar_subquery()), *due)
                .values(status="pending", next_attempt_at=now + self._lease())
                .returning(NotificationRow)
            ).all()
            claimed = [(row.id, row.channel, row.recipient, _message_from_row(row)) for row in rows]
        attempts, results = [], []
        for row_id, channel_name, recipient, message in sorted(claimed):
            channel = self._channel_named(channel_name, recipient)
            if channel is None:
                error = f"channel {channel_name!r} is no longer configured"
                self._save(row_id, 0, error, retry_later=False)
                results.append(DeliveryResult(channel_name, "failed", row_id, error=error))
            else:
                attempts.append(_Attempt(channel, message))
        return results + self._send_and_record(attempts, retry_later=True)

    # Delivery -----------------------------------------------------------------------------

    def _routed(self, severity: str) -> list[ChannelConfig]:
        return [c for c in self._shared() if severity in c.severities]

    def _dispatch(
        self, message: Message, targets: Sequence[ChannelConfig], *, retry_later: bool = True
    ) -> list[DeliveryResult]:
        if not targets:
            return [self._log_only(message)]
        # A lease: if this process dies before it records the outcome, retry_pending takes
        # the row once the lease has run out.
        lease_end = self._clock() + self._lease()
        rows = [
            self._row(message, c.name, _recipient(c, message), "pending", next_attempt_at=lease_end)
            for c in targets
        ]
        try:
            ids = self._insert(rows)
        except SQLAlchemyError as exc:
            # Still send: an alert matters more than its bookkeeping (the database may be
            # the emergency), but it cannot be retried later.
            cause = _db_cause(exc)
            log.error("notification not recorded", error=cause, subject=message.subject)
            attempts = [_Attempt(c, message) for c in targets]
            results = self._send_and_record(attempts, retry_later=False, record=False)
            return [replace(r, note=f"not recorded in the database: {cause}") for r in results]
        attempts = [
            _Attempt(c, replace(message, notification_id=i))
            for c, i in zip(targets, ids, strict=True)
        ]
        return self._send_and_record(attempts, retry_later=retry_later)

    def _row(
        self, message: Message, channel: str, recipient: str | None, status: str, **more: Any
    ) -> NotificationRow:
        return NotificationRow(
            channel=channel,
            severity=message.severity,
            category=message.category,
            recipient=recipient,
            subject=message.subject,
            body=message.body,
            status=status,
            attempts=0,
            created_at=self._clock(),
            **more,
        )

    def _insert(self, rows: list[NotificationRow]) -> list[int]:
        with self._transaction() as session:
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def _send_and_record(
        self, attempts: list[_Attempt], *, retry_later: bool, record: bool = True
    ) -> list[DeliveryResult]:
        # In parallel: a slow or dead channel does not delay the others.
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(attempts)))) as pool:
            list(pool.map(self._attempt, attempts))
        return [self._record(a, retry_later=retry_later, record=record) for a in attempts]

    def _attempt(self, attempt: _Attempt) -> None:
        sender = self._sender(attempt.channel.type)
        settings = self.settings

        def once() -> Receipt:
            attempt.tries += 1
            started = time.monotonic()
            try:
                return sender.send(attempt.channel, attempt.message)
            finally:
                attempt.seconds = time.monotonic() - started

        retrying = Retrying(
            stop=stop_after_attempt(settings.attempts),
            wait=wait_exponential(multiplier=settings.backoff_seconds, max=30),
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and e.transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            attempt.receipt = retrying(once)
        except DeliveryError as exc:
            attempt.error = str(exc)
        except Exception as exc:  # a broken sender must not stop the other channels
            log.exception("notification sender crashed", channel=attempt.channel.name)
            attempt.error = f"{type(exc).__name__}: {exc}"

    def _record(self, attempt: _Attempt, *, retry_later: bool, record: bool) -> DeliveryResult:
        message, channel = attempt.message, attempt.channel
        result = DeliveryResult(
            channel=channel.name,
            status="sent" if attempt.receipt else "failed",
            notification_id=message.notification_id,
            channel_type=channel.type,
            recipient=_recipient(channel, message),
            attempts=attempt.tries,
            seconds=attempt.seconds,
            code=attempt.receipt.code if attempt.receipt else None,
            error=attempt.error,
        )
        if attempt.receipt is None:
            log.warning("notification failed", channel=channel.name, error=attempt.error)
        if not record or message.notification_id is None:
            return result
        try:
            next_at = self._save(
                message.notification_id, attempt.tries, attempt.error, retry_later=retry_later
            )
        except SQLAlchemyError as exc:
            return replace(result, note=f"outcome not recorded: {_db_cause(exc)}")
        return replace(result, next_attempt_at=next_at)

    def _save(
        self, row_id: int, tries: int, error: str | None, *, retry_later: bool
    ) -> dt.datetime | None:
        """Record an outcome (error None: sent); returns when the row is retried, if it is."""
        with self._transaction() as session:
            row = session.get(NotificationRow, row_id)
            if row is None:
                return None
            row.attempts += tries
            row.status, row.last_error = ("failed", error) if error else ("sent", None)
            row.sent_at = None if error else self._clock()
            retry = error is not None and retry_later
            row.next_attempt_at = self._next_attempt(row.attempts) if retry else None
            return row.next_attempt_at

    def _next_attempt(self, attempts: int) -> dt.datetime | None:
        settings = self.settings
        if attempts >= settings.max_attempts:
            return None  # given up: the row stays failed and visible
        rounds = max(1, attempts // settings.attempts)
        delay = dt.timedelta(seconds=settings.retry_after_seconds * 2 ** (rounds - 1))
        return self._clock() + min(delay, _MAX_DELAY)

    def _stamp(self) -> str:
        return f"Host: {socket.gethostname()}\nAt: {self._clock():%Y-%m-%d %H:%M:%S} UTC"

    def _lease(self) -> dt.timedelta:
        s = self.settings
        return dt.timedelta(seconds=s.attempts * (s.timeout_seconds + 30) + 60)

    def _log_only(self, message: Message) -> DeliveryResult:
        log.warning("notification kept in the database only", subject=message.subject)
        row_id, failure = self._keep(message, LOG_CHANNEL, "sent", sent_at=self._clock())
        if failure:
            return DeliveryResult(LOG_CHANNEL, "failed", error=f"not kept: {failure}")
        note = _NO_CHANNEL if not self.channels() else f"no channel takes {message.severity}"
        return DeliveryResult(LOG_CHANNEL, "logged", row_id, note=note)

    def _no_recipient(self, message: Message, why: str) -> DeliveryResult:
        # Kept as a failed row (never retried) so that health checks see it.
        error = f"no recipient: {why}, and FINOPS_NOTIFY_FALLBACK_CONTACT is not set"
        log.warning("owner notice has no recipient", subject=message.subject)
        row_id, _ = self._keep(message, OWNER_CHANNEL, "failed", last_error=error)
        return DeliveryResult(OWNER_CHANNEL, "no_recipient", row_id, "email", error=error)

    def _keep(
        self, message: Message, channel: str, status: str, **more: Any
    ) -> tuple[int | None, str | None]:
        """Store a row that is not to be sent: its id, or None and the database's error."""
        try:
            (row_id,) = self._insert([self._row(message, channel, None, status, **more)])
        except SQLAlchemyError as exc:
            log.error("notification not recorded", subject=message.subject, error=_db_cause(exc))
            return None, _db_cause(exc)
        return row_id, None

    def _sender(self, channel_type: str) -> Sender:
        override = self._sender_overrides.get(channel_type)
        return override or default_senders(self.settings)[channel_type]

    def _channel_named(self, name: str, recipient: str | None) -> ChannelConfig | None:
        if name == OWNER_CHANNEL:
            return owner_channel(recipient) if recipient else None
        return next((c for c in self.channels() if c.name == name), None)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        session = (self._session_factory or session_factory(self._database_url))()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def _recipient(channel: ChannelConfig, message: Message) -> str | None:
    if message.recipient:
        return message.recipient[:256]
    return channel.target[:256] if channel.type == "email" else None


def _message_from_row(row: NotificationRow) -> Message:
    recipient = row.recipient if row.channel == OWNER_CHANNEL else None
    return Message(row.severity, row.category, row.subject, row.body, recipient, row.id)


def _first_line(text: str, limit: int = 120) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _db_cause(exc: SQLAlchemyError) -> str:
    cause = error_cause(exc)
    missing = "no such table" in cause or "does not exist" in cause
    return cause + ("; run `finops db upgrade`" if missing else "")
