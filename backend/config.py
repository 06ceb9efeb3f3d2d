"""Settings, read from the environment (and a `.env` file) the first time they are asked for.

Nothing here runs at import: call `get_settings()`. A bad value raises `SettingsError`, whose
message names the variable and what is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
ACCOUNT_PATTERN = re.compile(r"^\d{12}$")
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
DEFAULT_SECRET = "change-me"  # refused outside development


class SettingsError(RuntimeError):
    """The configuration cannot be used; the message names each bad variable."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FINOPS_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default=Path("./.finops"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "FINOPS_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "FINOPS_REDIS_URL")
    )
    cost_optimization_role_arn: str | None = Field(
        default=None,
        validation_alias=AliasChoices("COST_OPTIMIZATION_ROLE_ARN", "FINOPS_ROLE_ARN"),
    )
    # Role assumed in each listed account: arn:<partition>:iam::<account>:role/<role_name>,
    # in the partition of COST_OPTIMIZATION_ROLE_ARN when set (aws-us-gov, aws-cn), else aws.
    role_name: str | None = None
    accounts: CsvList = Field(default_factory=list)
    regions: CsvList = Field(default_factory=lambda: ["us-east-1"])
    aws_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "FINOPS_AWS_ENDPOINT_URL")
    )
    protected_tag_key: str = "env"
    protected_tag_values: CsvList = Field(default_factory=lambda: ["prod", "production"])
    opt_out_tag: str = "finops:opt-out"
    dry_run: bool = True
    metrics_window_days: int = Field(default=14, ge=1, le=455)
    scan_concurrency: int = Field(default=8, ge=1, le=64)
    # Requests in flight at once per AWS endpoint (a service in a region), per process: the
    # threads of one process share it (a scan's discovery; a `--pool threads` worker).
    aws_requests_per_endpoint: int = Field(default=1, ge=1, le=64)
    price_overrides: Path | None = None
    secret_key: str = DEFAULT_SECRET
    # Policy packs: files or directories; the default pack ships in the repository.
    policy_paths: CsvList = Field(default_factory=lambda: [str(DEFAULT_POLICY_DIR)])
    # Safety: only an administrator's configuration changes these; no policy can.
    protected_accounts: CsvList = Field(default_factory=list)
    protected_regions: CsvList = Field(default_factory=list)
    # Change freezes: ISO intervals "2026-12-20T00:00Z/2027-01-03T00:00Z", comma-separated.
    freeze_windows: CsvList = Field(default_factory=list)
    max_actions_per_run: int = Field(default=50, ge=0)
    max_actions_per_hour: int = Field(default=100, ge=0)
    max_percent_of_fleet_per_run: float = Field(default=10.0, ge=0, le=100)
    approval_ttl_hours: float = Field(default=24.0, gt=0)
    # Inventory and metrics older than this block planning and execution (fail closed):
    # an account whose scans keep failing must not be acted on from old evidence.
    max_inventory_age_hours: float = Field(default=24.0, gt=0)
    action_deadline_minutes: float = Field(default=30.0, gt=0)
    # A scheduled policy plans, and its actions run, only this long after its cron fires:
    # scan, plan and execution must fit in it; later, the run is skipped, not run late.
    schedule_run_window_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    # API lists count their matching rows up to this many; past it, the total is a bound.
    api_count_cap: int = Field(default=10_000, ge=1, le=1_000_000)
    # The API keeps list pages and token checks in memory while PostgreSQL's notifications
    # say nothing behind them changed (backend/api/change_feed.py); off on SQLite.
    api_read_cache: bool = True
    api_read_cache_megabytes: int = Field(default=64, ge=1, le=16_384)  # per API process
    # The longest a page is served from memory, even if no change was notified: a bound
    # on what a write that bypassed the notifying triggers could leave stale.
    api_read_cache_seconds: float = Field(default=30.0, gt=0, le=3600)
    # One PostgreSQL statement of an API request: cancelled by the server past this, and
    # given up on by the API 2 s later when the server does not answer at all (503). 0: none.
    api_database_timeout_seconds: float = Field(default=30.0, ge=0)
    # The distributed runtime (REDIS_URL set): Celery workers and beat.
    # The runbook's recovery step deletes /tmp/celerybeat-schedule: beat rebuilds it.
    beat_schedule_path: Path = Field(default=Path("/tmp/celerybeat-schedule"))
    dispatch_interval_seconds: float = Field(default=30.0, gt=0)  # due actions re-enqueued
    heartbeat_interval_seconds: float = Field(default=15.0, gt=0)
    heartbeat_stale_seconds: float = Field(default=300.0, gt=0)  # a worker this quiet is gone
    # An unacknowledged task goes back to the queue after this long (a killed worker's).
    task_visibility_timeout_seconds: int = Field(default=900, ge=10)

    @field_validator(
        "accounts",
        "regions",
        "protected_tag_values",
        "policy_paths",
        "protected_accounts",
        "protected_regions",
        "freeze_windows",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not REGION_PATTERN.fullmatch(r)]
        if bad:
            raise ValueError(f"not an AWS region name: {', '.join(bad)} (e.g. us-east-1)")
        if not value:
            raise ValueError("at least one region is needed")
        return value

    @field_validator("freeze_windows")
    @classmethod
    def _freeze_windows(cls, value: list[str]) -> list[str]:
        for window in value:
            parse_window(window)
        return value

    @field_validator("accounts", "protected_accounts")
    @classmethod
    def _accounts(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not ACCOUNT_PATTERN.fullmatch(a)]
        if bad:
            raise ValueError(f"not a 12-digit AWS account id: {', '.join(bad)}")
        return value

    @field_validator("cost_optimization_role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value and not ROLE_ARN_PATTERN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
            )
        return value or None

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value or None

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or SQLite in the data directory (the embedded default)."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'finops.db').resolve()}"

    @property
    def role_name_for_accounts(self) -> str | None:
        if self.role_name:
            return self.role_name
        if self.cost_optimization_role_arn:
            return self.cost_optimization_role_arn.split(":role/", 1)[1]
        return None

    def require_safe_secret(self) -> None:
        if self.environment != "development" and self.secret_key == DEFAULT_SECRET:
            raise SettingsError(
                "FINOPS_SECRET_KEY: the default secret is refused outside development; "
                "set a long random value"
            )


def parse_window(text: str) -> tuple[dt.datetime, dt.datetime]:
    """'START/END' in ISO 8601 with a zone -> (start, end); ValueError names what is wrong."""
    start_text, sep, end_text = text.partition("/")
    try:
        if not sep:
            raise ValueError("expected START/END")
        start, end = (
            dt.datetime.fromisoformat(t.strip().replace("Z", "+00:00"))
            for t in (start_text, end_text)
        )
    except ValueError as exc:
        raise ValueError(
            f"freeze window {text!r}: {exc} (e.g. 2026-12-20T00:00Z/2027-01-03T00:00Z)"
        ) from None
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"freeze window {text!r}: times need a zone (Z or +01:00)")
    if end <= start:
        raise ValueError(f"freeze window {text!r}: the end is not after the start")
    return start, end


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (or none)."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        env_name = _ENV_NAMES.get(field, "FINOPS_" + field.upper())
        lines.append(f"  {env_name}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


_ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "cost_optimization_role_arn": "COST_OPTIMIZATION_ROLE_ARN",
    "aws_endpoint_url": "AWS_ENDPOINT_URL",
    "DATABASE_URL": "DATABASE_URL",
    "REDIS_URL": "REDIS_URL",
    "COST_OPTIMIZATION_ROLE_ARN": "COST_OPTIMIZATION_ROLE_ARN",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    """Forget the cached settings, the notification settings too (tests, and after the
    environment changes): a stale copy of either outlives the environment it was read from."""
    # Imported here: notification_settings imports this module.
    from backend.core.notification_settings import reset_notification_settings_cache

    get_settings.cache_clear()
    reset_notification_settings_cache()


@contextmanager
def overridden_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set these environment variables for the length of the block, then put back what was
    there (unset stays unset); the cached settings are forgotten on the way in and out."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    reset_settings_cache()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_settings_cache()
