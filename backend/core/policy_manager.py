"""PolicyManager: the policy pack from files, and whether each policy may run, from the database.

Files say what a policy does; the database says whether it may run now (disabled, paused,
or under a policy-scope override). A pack with any problem is refused whole. The runbook
calls `validate_all_policies()` without print, so it prints its own report.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend.config import SettingsError, get_settings
from backend.core.audit_chain import EventType, iso, sanitize_details
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import DatabaseUnavailableError, error_cause, session_scope
from backend.core.models import OverrideRow, PolicyRow
from backend.core.runbook_output import echo
from backend.core.types import utcnow
from backend.core.upsert import upsert_rows
from backend.domain.policy import Policy, PolicyPack, PolicyProblem, PolicyValidationError
from backend.domain.policy import load_pack as _load_pack
from backend.domain.policy.spec import YamlError, YList, parse_yaml

SYNCED_FIELDS = ("kind", "mode", "definition", "source")  # what the files own; the rest is ours
DB_ERRORS = (SQLAlchemyError, DatabaseUnavailableError, SettingsError, OSError)


class UnknownPolicyError(LookupError):
    """No policy of that name in the files or the database; the message lists the known."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listed = ", ".join(known) if known else "none (check FINOPS_POLICY_PATHS)"
        super().__init__(f"unknown policy {name!r}{hint}; known policies: {listed}")


@dataclass(frozen=True)
class PolicyValidationReport:
    ok: bool
    policies: int
    files: int
    problems: list[PolicyProblem]
    paths: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()  # in the database, no longer in the files
    unknown_overrides: tuple[str, ...] = ()  # policy overrides naming no policy in the files
    database_checked: bool = False
    lines: tuple[str, ...] = ()  # the report as printed

    def __str__(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # rows kept with their state; never run


@dataclass(frozen=True)
class PolicyStatus:
    """A file policy with its database state; `blocked_by` says why it may not run now."""

    policy: Policy
    synced: bool
    db_enabled: bool
    paused_until: dt.datetime | None
    overrides: tuple[str, ...]
    now: dt.datetime

    @property
    def blocked_by(self) -> list[str]:
        why = [] if self.policy.enabled else ["disabled in its file"]
        return why + _holds(self.db_enabled, self.paused_until, self.overrides, self.now)

    @property
    def enabled(self) -> bool:
        return not self.blocked_by


class PolicyManager:
    def __init__(
        self,
        paths: Sequence[Path | str] | None = None,
        *,
        session_factory: Callable[[], Session] | None = None,
    ) -> None:
        self._paths = [Path(p) for p in paths] if paths else None
        self._session_factory = session_factory
        self._audit = AuditLogger(session_factory=session_factory)

    @property
    def paths(self) -> list[Path]:
        # Read when used, so that constructing a manager never fails on configuration.
        return self._paths or [Path(p) for p in get_settings().policy_paths]

    def load(self) -> PolicyPack:
        """The pack from the files; PolicyValidationError if anything is wrong (refused whole)."""
        return _load_pack(self.paths)

    def validate_all_policies(self) -> PolicyValidationReport:
        """`check()`, printed for a person at a terminal; never raises for the database."""
        report = self.check()
        for line in report.lines:
            echo(line)
        return report

    def check(self, *, database: bool = True) -> PolicyValidationReport:
        """Validate the files, then compare them with the database when it answers."""
        shown = tuple(str(p) for p in self.paths)
        files = sum(len(_expand(p)) for p in self.paths)
        try:
            pack = self.load()
        except PolicyValidationError as exc:
            count = len(exc.problems)
            lines = [
                *map(str, exc.problems),
                f"policy pack REFUSED: {count} problem(s); nothing from it will run",
            ]
            return PolicyValidationReport(
                False, 0, files, list(exc.problems), shown, lines=(*lines,)
            )
        lines = [f"policy pack OK: {len(pack)} policies in {files} files ({', '.join(shown)})"]
        stale: list[str] = []
        unknown: list[str] = []
        checked = False
        if database and (missing := self._missing_sqlite()):
            lines.append(f"database not checked: no database yet at {missing}")
        elif database:
            try:
                with self._session(None) as session:
                    stale, unknown, notes = _compare(session, pack, utcnow())
                lines, checked = lines + notes, True
            except DB_ERRORS as exc:  # the files were checked; say what was not
                lines.append(f"database not checked (the files were): {error_cause(exc)}")
        return PolicyValidationReport(
            True, len(pack), files, [], shown, (*stale,), (*unknown,), checked, (*lines,)
        )

    def sync(self, session: Session, actor: str) -> SyncResult:
        """Record each file policy in the database; enabled and paused state stay as they are."""
        pack = self.load()
        definitions = _definitions(pack)
        columns = [getattr(PolicyRow, name) for name in ("name", *SYNCED_FIELDS)]
        existing = {
            r[0]: dict(zip(SYNCED_FIELDS, r[1:], strict=True))
            for r in session.execute(select(*columns))
        }
        result, rows, now = SyncResult(), [], utcnow()
        for policy in pack:
            row = _row_values(policy, definitions[policy.name])
            old = existing.get(policy.name)
            changed = [k for k in SYNCED_FIELDS if old is None or row[k] != old[k]]
            if not changed:
                result.unchanged.append(policy.name)
                continue
            (result.created if old is None else result.updated).append(policy.name)
            rows.append({**row, "enabled": True, "updated_at": now})  # enabled: new rows only
            details = {"change": "sync", "fields": changed, "source": policy.source}
            self._record(session, policy.name, actor, "updated" if old else "created", details)
        upsert_rows(
            session,
            PolicyRow,
            rows,
            conflict_columns=["name"],
            update_columns=[*SYNCED_FIELDS, "updated_at"],
        )
        result.stale.extend(sorted(set(existing) - set(pack.by_name)))
        return result

    def statuses(
        self, session: Session, now: dt.datetime, pack: PolicyPack | None = None
    ) -> list[PolicyStatus]:
        """Each file policy with its database state, in file order."""
        return _statuses(session, pack if pack is not None else self.load(), now)

    def effective_pack(self, session: Session, now: dt.datetime) -> PolicyPack:
        """The file pack with database state applied: a blocked policy has enabled=False."""
        statuses = self.statuses(session, now)
        return PolicyPack(
            tuple(s.policy if s.enabled else replace(s.policy, enabled=False) for s in statuses)
        )

    # Each change returns whether anything changed: the same state again writes nothing.

    def set_enabled(
        self,
        name: str,
        enabled: bool,
        actor: str,
        reason: str | None = None,
        *,
        session: Session | None = None,
    ) -> bool:
        if not enabled:
            _need_reason(reason, "disable")
        outcome = "enabled" if enabled else "disabled"
        return self._update(name, actor, outcome, {"enabled": enabled}, reason, session)

    def pause(
        self,
        name: str,
        until: dt.datetime,
        actor: str,
        reason: str,
        *,
        session: Session | None = None,
    ) -> bool:
        if until.tzinfo is None:
            raise ValueError("the pause end needs a time zone (Z or +01:00)")
        if until <= utcnow():
            raise ValueError(f"the pause end {iso(until)} is not in the future")
        _need_reason(reason, "pause")
        return self._update(name, actor, "paused", {"paused_until": until}, reason, session)

    def resume(
        self, name: str, actor: str, reason: str | None = None, *, session: Session | None = None
    ) -> bool:
        return self._update(name, actor, "resumed", {"paused_until": None}, reason, session)

    @contextmanager
    def _session(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session  # the caller's transaction: the caller commits
            return
        with session_scope(factory=self._session_factory) as own:
            yield own

    def _update(
        self,
        name: str,
        actor: str,
        outcome: str,
        values: dict[str, Any],
        reason: str | None,
        session: Session | None,
    ) -> bool:
        with self._session(session) as s:
            row = self._row(s, name, actor)
            before = {key: getattr(row, key) for key in values}
            if before == values:
                return False
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            details = {"reason": reason, "from": before, "to": values}
            self._record(s, name, actor, outcome, details)
            return True

    def _row(self, session: Session, name: str, actor: str) -> PolicyRow:
        """The row for `name`, locked; a policy in the files but never synced is synced first."""
        query = select(PolicyRow).where(PolicyRow.name == name).with_for_update()
        row = session.scalar(query)
        if row is None:
            try:
                pack: PolicyPack | None = self.load()
            except PolicyValidationError:
                pack = None  # a refused pack: only the database's names are known
            if pack is None or name not in pack.by_name:
                known = set(session.scalars(select(PolicyRow.name)))
                raise UnknownPolicyError(name, sorted(known | set(pack.by_name if pack else ())))
            self.sync(session, actor)
            row = session.scalar(query)
        assert row is not None
        return row

    def _record(
        self, session: Session, name: str, actor: str, outcome: str, details: dict[str, Any]
    ) -> None:
        self._audit.record(
            EventType.POLICY_CHANGE,
            subject_type="policy",
            subject_id=name,
            actor=actor,
            outcome=outcome,
            details=details,
            session=session,
        )

    def _missing_sqlite(self) -> str | None:
        """The embedded database's path when it does not exist: a check must not create it."""
        if self._session_factory is not None:
            return None
        try:
            url = make_url(get_settings().effective_database_url)
        except (SettingsError, SQLAlchemyError, ValueError):
            return None  # reported when the session is opened
        path = url.database if url.get_backend_name() == "sqlite" else None
        return path if path and path != ":memory:" and not Path(path).exists() else None


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return [p for p in path.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file()]
    return [path] if path.exists() else []


def _compare(
    session: Session, pack: PolicyPack, now: dt.datetime
) -> tuple[list[str], list[str], list[str]]:
    """Stale rows, overrides of unknown policies, and report lines about them and the state."""
    names = set(session.scalars(select(PolicyRow.name)))
    overrides = _active_overrides(session, now)
    stale = sorted(names - set(pack.by_name))
    unknown = sorted(set(overrides) - set(pack.by_name))
    lines = []
    if stale:
        lines.append(
            f"warning: {len(stale)} policy(ies) in the database are no longer in the "
            f"files (stale, they do not run): {', '.join(stale)}"
        )
    for target in unknown:
        for o in overrides[target]:
            lines.append(
                f"warning: override #{o.id} pauses unknown policy {target!r}: {_describe(o)}"
            )
    statuses = _statuses(session, pack, now)
    blocked = [f"{s.policy.name} ({'; '.join(s.blocked_by)})" for s in statuses if not s.enabled]
    lines.append(
        f"database: {len(pack) - len(blocked)} of {len(pack)} policies may run"
        + (f"; not running: {', '.join(blocked)}" if blocked else "")
    )
    unsynced = [s.policy.name for s in statuses if not s.synced]
    if unsynced:
        lines.append(
            f"note: {len(unsynced)} policy(ies) not yet in the database "
            f"(run `finops policy sync`): {', '.join(unsynced)}"
        )
    return stale, unknown, lines


def _statuses(session: Session, pack: PolicyPack, now: dt.datetime) -> list[PolicyStatus]:
    rows = {r.name: r for r in session.scalars(select(PolicyRow))}
    overrides = _active_overrides(session, now)
    return [
        PolicyStatus(
            policy,
            synced=(row := rows.get(policy.name)) is not None,
            db_enabled=row.enabled if row is not None else True,
            paused_until=row.paused_until if row is not None else None,
            overrides=tuple(_describe(o) for o in overrides.get(policy.name, [])),
            now=now,
        )
        for policy in pack
    ]


def database_holds(session: Session, name: str, now: dt.datetime) -> list[str]:
    """Why the database holds policy `name` now (disabled, paused, an override), read fresh.
    Asked before each action is claimed: the pack an engine was handed may be a file's, or
    read before a pause that came in the middle of the run."""
    row = session.scalar(select(PolicyRow).where(PolicyRow.name == name))
    overrides = tuple(_describe(o) for o in _active_overrides(session, now, name).get(name, []))
    enabled = row.enabled if row is not None else True
    return _holds(enabled, row.paused_until if row is not None else None, overrides, now)


def _holds(
    enabled: bool, paused_until: dt.datetime | None, overrides: Sequence[str], now: dt.datetime
) -> list[str]:
    why = [] if enabled else ["disabled"]
    if paused_until is not None and paused_until > now:
        why.append(f"paused until {paused_until:%Y-%m-%d %H:%M}Z")
    return why + [f"override: {o}" for o in overrides]


def _active_overrides(
    session: Session, now: dt.datetime, name: str | None = None
) -> dict[str, list[OverrideRow]]:
    query = (
        select(OverrideRow)
        .where(OverrideRow.scope == "policy")
        .where(or_(OverrideRow.expires_at.is_(None), OverrideRow.expires_at > now))
        .order_by(OverrideRow.id)
    )
    if name is not None:
        query = query.where(OverrideRow.target == name)
    found: dict[str, list[OverrideRow]] = {}
    for row in session.scalars(query):
        found.setdefault(row.target, []).append(row)
    return found


def _describe(override: OverrideRow) -> str:
    until = f", until {override.expires_at:%Y-%m-%d %H:%M}Z" if override.expires_at else ""
    return f"{override.reason} (by {override.created_by}{until})"


def _need_reason(reason: str | None, verb: str) -> None:
    if not (reason and reason.strip()):
        raise ValueError(f"a reason is needed to {verb} a policy")


def _row_values(policy: Policy, definition: dict[str, Any]) -> dict[str, Any]:
    kind, mode = policy.kind.value, policy.mode.value
    return {
        "name": policy.name,
        "kind": kind,
        "mode": mode,
        "definition": definition,
        "source": policy.source,
    }


def _definitions(pack: PolicyPack) -> dict[str, dict[str, Any]]:
    """Each policy's mapping as written in its file, as JSON (keys as the YAML spells them)."""
    written: dict[tuple[str, int], Any] = {}
    for file in sorted({p.source_file for p in pack if p.source_file}):
        try:
            document = parse_yaml(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, YamlError):
            continue
        listed = document.get("policies") if isinstance(document, dict) else None
        if isinstance(listed, YList):
            written.update(
                {(file, ln): item for item, ln in zip(listed, listed.item_lines, strict=True)}
            )
    result: dict[str, dict[str, Any]] = {}
    for p in pack:
        raw = written.get((p.source_file or "", p.source_line or 0))
        if not (isinstance(raw, dict) and raw.get("name") == p.name):
            # The file changed since it was loaded: keep what was loaded, less the filters.
            action = {"type": p.action.name, **p.action.params.options()}
            raw = {
                "name": p.name,
                "resource": p.kind.value,
                "mode": p.mode.value,
                "enabled": p.enabled,
                "action": action,
            }
        result[p.name] = sanitize_details(raw)
    return result
