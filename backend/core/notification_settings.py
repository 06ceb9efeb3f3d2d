"""Where notifications go: channels read from `FINOPS_NOTIFY_*` the first time they are asked for.

Two ways to declare channels, which add up:

- `FINOPS_NOTIFY_CHANNELS`: a JSON list of
  `{"name", "type": "slack"|"webhook"|"email", "target", "severities": [...], "emergency"}`
  (target: a URL, or comma-separated addresses for email);
- simple variables: `FINOPS_NOTIFY_SLACK_WEBHOOK_URL` (channel "slack"),
  `FINOPS_NOTIFY_WEBHOOK_URL` ("webhook"), `FINOPS_NOTIFY_EMAIL_TO` ("email").

Email goes through the one SMTP server of `FINOPS_NOTIFY_SMTP_*`, from `EMAIL_FROM`. An owner
notice goes where `FINOPS_NOTIFY_OWNER_ROUTES` (a JSON object, owner tag value -> channel name
or email address, e.g. `{"team-a": "team-a-slack"}`) sends that owner; else to the owner tag's
email address; else to `FINOPS_NOTIFY_FALLBACK_CONTACT`; else nowhere (and nothing is done).
A channel with `"owners_only": true` carries only the owner notices routed to it. With no
channel, messages are only kept in the database (the "log" channel). A bad value raises
SettingsError naming the variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.config import SettingsError

Severity = Literal["P0", "P1", "P2"]
ChannelType = Literal["slack", "webhook", "email"]
SEVERITIES: tuple[Severity, ...] = ("P0", "P1", "P2")
ENV_PREFIX = "FINOPS_NOTIFY_"
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
LOG_CHANNEL = "log"  # no channel configured: messages are only kept in the database
OWNER_CHANNEL = "owner-email"  # owner notices, through the SMTP server
RESERVED_NAMES = (LOG_CHANNEL, OWNER_CHANNEL)
_SECRET_FIELDS = ("smtp_password", "slack_webhook_url", "webhook_url", "channels")


def is_email(value: str) -> bool:
    return bool(_EMAIL.fullmatch(value.strip()))


def split_addresses(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]


def safe_url(url: str) -> str:
    """scheme://host[:port] only: webhook paths carry secrets (Slack's do)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class ChannelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ChannelType
    target: str
    severities: tuple[Severity, ...] = SEVERITIES
    emergency: bool = False
    # A team's own channel: it gets the owner notices routed to it, not everyone's alerts.
    owners_only: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("lower-case letters, digits, '_', '.', '-' (at most 64)")
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("severities", mode="before")
    @classmethod
    def _severities(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and not value:
            raise ValueError("at least one of P0, P1, P2")
        return value

    @model_validator(mode="after")
    def _target(self) -> ChannelConfig:
        if self.type == "email":
            addresses = split_addresses(self.target)
            bad = [a for a in addresses if not is_email(a)]
            if not addresses or bad:
                raise ValueError(f"target: not an email address list: {self.target!r}")
        elif (
            urlsplit(self.target).scheme not in ("http", "https")
            or not urlsplit(self.target).hostname
        ):
            # The URL itself is not echoed: a webhook URL is a secret.
            raise ValueError(f"target: a {self.type} channel needs an http(s):// URL")
        if self.owners_only and self.emergency:
            raise ValueError("emergency: an owners_only channel takes no emergency alerts")
        return self

    @property
    def display_target(self) -> str:
        return self.target if self.type == "email" else safe_url(self.target)


class NotificationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    channels: Annotated[list[ChannelConfig], NoDecode] = Field(default_factory=list)
    slack_webhook_url: str | None = None
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    email_from: str | None = None
    email_to: str | None = None
    fallback_contact: str | None = None
    # owner tag value (any case) -> channel name or email address
    owner_routes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # In-process delivery: attempts per send, the first backoff (doubling), the timeout.
    attempts: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0, le=30)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Later delivery by retry_pending(): first delay (doubling), and when to give up.
    retry_after_seconds: int = Field(default=300, ge=1)
    max_attempts: int = Field(default=12, ge=1)

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_json(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, list):
            raise ValueError("must be a JSON list of channel objects")
        return value

    @field_validator("owner_routes", mode="before")
    @classmethod
    def _routes_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
            for k, v in value.items()
        ):
            raise ValueError(
                'a JSON object of owner -> channel name or address, e.g. {"team-a": "team-slack"}'
            )
        # Owner tags are typed by people: "Team-A " and "team-a" are the same owner.
        return {k.strip().lower(): v.strip() for k, v in value.items()}

    @field_validator("email_from", "fallback_contact")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value and not is_email(value):
            raise ValueError("not an email address")
        return value or None

    @field_validator("slack_webhook_url", "webhook_url", "email_to", "smtp_host", "smtp_user")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None

    @model_validator(mode="after")
    def _consistent(self) -> NotificationSettings:
        names = [c.name for c in self.all_channels()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"channels: duplicate channel name {', '.join(duplicates)} "
                "(the simple variables define 'slack', 'webhook' and 'email')"
            )
        for owner, target in self.owner_routes.items():
            if not is_email(target) and target not in names:
                raise ValueError(
                    f"owner_routes: {owner!r} goes to {target!r}, which is neither an email "
                    "address nor the name of a channel"
                )
        wants_smtp = any(c.type == "email" for c in self.all_channels()) or any(
            is_email(t) for t in self.owner_routes.values()
        )
        if wants_smtp and not self.smtp_host:
            raise ValueError("smtp_host: an email channel needs an SMTP server")
        if self.smtp_host and not self.email_from:
            raise ValueError("email_from: sending email needs a From address")
        if self.smtp_user and self.smtp_password is None:
            raise ValueError("smtp_password: SMTP_USER is set without a password")
        return self

    def all_channels(self) -> list[ChannelConfig]:
        """The JSON channels, then those of the simple variables."""
        simple: list[ChannelConfig] = []
        if self.slack_webhook_url:
            simple.append(_simple("slack", "slack", self.slack_webhook_url, "slack_webhook_url"))
        if self.webhook_url:
            simple.append(_simple("webhook", "webhook", self.webhook_url, "webhook_url"))
        if self.email_to:
            simple.append(_simple("email", "email", self.email_to, "email_to"))
        return [*self.channels, *simple]

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host and self.email_from)

    def owner_route(self, owner: str | Mapping[str, str] | None) -> OwnerRoute:
        """Where an owner's notice goes: its route, its email address, else the fallback."""
        value = _owner_value(owner, self.owner_routes)
        routed = self.owner_routes.get(value.strip().lower()) if value else None
        if value and routed:
            if is_email(routed):
                return OwnerRoute(value, owner_channel(routed), routed)
            channel = next(c for c in self.all_channels() if c.name == routed)
            return OwnerRoute(value, channel)
        if value and is_email(value):
            return OwnerRoute(value, owner_channel(value.strip()), value.strip())
        why = "no owner tag"
        if value:
            why = f"owner tag {value!r} is not an email address"
            why += " and has no owner route" if self.owner_routes else ""
        if self.fallback_contact:
            note = f"{why}: sent to the fallback contact"
            return OwnerRoute(
                value, owner_channel(self.fallback_contact), self.fallback_contact, note
            )
        return OwnerRoute(value, None, None, why)


def _simple(name: str, kind: ChannelType, target: str, field: str) -> ChannelConfig:
    try:
        return ChannelConfig(name=name, type=kind, target=target)
    except ValidationError as exc:
        # Re-labelled so that the message names the simple variable, not the JSON list.
        messages = "; ".join(
            str(e["msg"]).removeprefix("Value error, ").removeprefix("target: ")
            for e in exc.errors()
        )
        raise ValueError(f"{field}: {messages}") from None


def load_notification_settings(**overrides: Any) -> NotificationSettings:
    try:
        return NotificationSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None


def describe_error(exc: ValidationError) -> str:
    lines = ["invalid notification configuration:"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        message = str(err["msg"]).removeprefix("Value error, ")
        # Inputs are echoed only for plain fields: a channel entry or the whole model may
        # hold a webhook URL or a password.
        shown = len(loc) == 1 and loc[0] not in _SECRET_FIELDS
        if not loc:
            # A model-level check: its message starts with the field it is about.
            field, _, message = message.partition(": ")
            loc = [field]
        variable = ENV_PREFIX + loc[0].upper()
        if loc[0] == "channels" and len(loc) > 1:
            variable += f"[{loc[1]}]" + "".join(f".{part}" for part in loc[2:])
        got = f" (got {err.get('input')!r})" if shown else ""
        lines.append(f"  {variable}: {message}{got}")
    return "\n".join(lines)


def owner_channel(address: str) -> ChannelConfig:
    # Built without validation: the name is reserved, and the address was already checked.
    return ChannelConfig.model_construct(
        name=OWNER_CHANNEL, type="email", target=address, severities=SEVERITIES, emergency=False
    )


OWNER_TAG_KEYS = ("owner", "owner-email", "owner_email", "owneremail", "finops:owner", "contact")


@dataclass(frozen=True)
class OwnerRoute:
    """Where one owner's notices go. `channel` None: nowhere, and `note` says why."""

    owner: str | None
    channel: ChannelConfig | None
    recipient: str | None = None  # the address, when it goes by email to one person
    note: str | None = None  # why it does not go to the owner (the fallback), or nowhere

    @property
    def target(self) -> str | None:
        """For people and the audit: the address, or the channel's name and type."""
        if self.channel is None:
            return None
        return self.recipient or f"{self.channel.name} ({self.channel.type} channel)"


def _owner_value(owner: str | Mapping[str, str] | None, routes: Mapping[str, str]) -> str | None:
    """The owner from an owner tag value or a tag dict: a routed one first, then an email."""
    if not isinstance(owner, Mapping):
        return owner.strip() or None if owner else None
    lowered = {k.lower(): v.strip() for k, v in owner.items()}
    found = [lowered[k] for k in OWNER_TAG_KEYS if lowered.get(k)]
    routed = next((v for v in found if v.lower() in routes), None)
    return routed or next((v for v in found if is_email(v)), found[0] if found else None)


@lru_cache(maxsize=1)
def get_notification_settings() -> NotificationSettings:
    return load_notification_settings()


def reset_notification_settings_cache() -> None:
    """Forget the cached settings (tests, and after the environment changes)."""
    get_notification_settings.cache_clear()
