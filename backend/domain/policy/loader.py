"""Load policy files into a PolicyPack, collecting every problem with file, policy and line.

A file is `policies: [...]`; each policy reads the way a Cloud Custodian user expects:

    - name: unattached-ebs-delete
      resource: ebs                  # or aws.ebs
      filters: [{State: available}, {"tag:finops:opt-out": absent}]
      action: {type: delete, backup: true}     # or `actions: [delete]`; default: report
      mode: approval                 # report | approval | auto
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backend.domain.policy import measures as _measures  # noqa: F401  (registers filters)
from backend.domain.policy import relations as _relations  # noqa: F401
from backend.domain.policy import values as _values  # noqa: F401
from backend.domain.policy.actions import ACTIONS, ALIASES, ActionSpec, Backup, find_action
from backend.domain.policy.filters import And, ParseContext, parse_filter_list
from backend.domain.policy.model import (
    Limits,
    Mode,
    Notice,
    Policy,
    PolicyPack,
    Risk,
    Rollback,
    Schedule,
)
from backend.domain.policy.spec import (
    Fields,
    PolicyProblem,
    PolicyValidationError,
    Sink,
    YamlError,
    YList,
    describe,
    line_of,
    parse_yaml,
    unknown,
)
from backend.domain.resources import ResourceKind

__all__ = [
    "MAX_FILE_BYTES",
    "PolicyProblem",
    "PolicyValidationError",
    "load_pack",
    "load_text",
    "validate_paths",
    "validate_text",
]

MAX_FILE_BYTES = 5 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
POLICY_KEYS = (
    "name", "resource", "description", "filters", "action", "actions", "mode", "schedule",
    "notice", "limits", "rollback", "risk", "enabled",
)  # fmt: skip
# Each policy item with a name, its file and line, and the policy if it is valid: names are
# checked for duplicates whether or not their policies are, so one pass reports both.
Located = tuple[str, Policy | None, str, int | None]


def validate_paths(paths: Sequence[Path]) -> list[PolicyProblem]:
    """Every problem in these files (a directory means its *.yml and *.yaml, sorted)."""
    return _load_paths(paths)[1]


def load_pack(paths: Sequence[Path]) -> PolicyPack:
    """The pack in these files; raises PolicyValidationError if there is any problem."""
    policies, problems = _load_paths(paths)
    if problems:
        raise PolicyValidationError(problems)
    return PolicyPack(tuple(policies))


def validate_text(text: str, file: str = "<text>") -> list[PolicyProblem]:
    return _load_texts([(file, text)])[1]


def load_text(text: str, file: str = "<text>") -> PolicyPack:
    policies, problems = _load_texts([(file, text)])
    if problems:
        raise PolicyValidationError(problems)
    return PolicyPack(tuple(policies))


def _load_paths(paths: Sequence[Path]) -> tuple[list[Policy], list[PolicyProblem]]:
    problems: list[PolicyProblem] = []
    texts: list[tuple[str, str | None]] = []
    for path in paths:
        sink = Sink(str(path))
        for file in _expand(Path(path), sink):
            texts.append((str(file), _read(file, Sink(str(file), problems=sink.problems))))
        problems.extend(sink.problems)
    policies, more = _load_texts(texts)
    return policies, problems + more


def _expand(path: Path, sink: Sink) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
        if not files:
            sink.add("no *.yml or *.yaml files in this directory", None)
        return files
    if not path.exists():
        sink.add("no such file or directory", None)
        return []
    return [path]


def _read(path: Path, sink: Sink) -> str | None:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            sink.add(f"file is {size} bytes; policy files are limited to {MAX_FILE_BYTES}", None)
            return None
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        sink.add(f"file is not UTF-8 text ({exc.reason} at byte {exc.start})", None)
    except OSError as exc:
        sink.add(f"cannot read file: {exc.strerror or exc}", None)
    return None


def _load_texts(
    texts: Sequence[tuple[str, str | None]],
) -> tuple[list[Policy], list[PolicyProblem]]:
    problems: list[PolicyProblem] = []
    located: list[Located] = []
    for file, text in texts:
        if text is None:
            continue  # unreadable; already reported
        sink = Sink(file, problems=problems)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            sink.add(f"text is over {MAX_FILE_BYTES} bytes; policy files are limited to that", None)
            continue
        located.extend(_policies_in(file, text, sink))
    first: dict[str, tuple[str, int | None]] = {}
    kept: list[Policy] = []
    for name, policy, file, line in located:
        if name in first:
            where = "{}:{}".format(*first[name])
            Sink(file, name, problems).add(
                f"duplicate policy name '{name}' (first defined at {where})", line
            )
            continue
        first[name] = (file, line)
        if policy is not None:
            kept.append(policy)
    return kept, problems


def _policies_in(file: str, text: str, sink: Sink) -> list[Located]:
    try:
        document = parse_yaml(text)
    except YamlError as exc:
        sink.add(exc.message, exc.line)
        return []
    if not isinstance(document, dict):
        sink.add(
            f"expected a mapping with a 'policies:' list, got {describe(document)}",
            line_of(document, 1),
        )
        return []
    top = Fields(document, sink, "the file", ("policies",))
    if not top.require("policies", "the file"):
        return []
    items = top.raw("policies")
    if not isinstance(items, list):
        sink.add(f"'policies' must be a list, got {describe(items)}", top.line_for("policies"))
        return []
    lines = items.item_lines if isinstance(items, YList) else [None] * len(items)
    found: list[Located] = []
    for item, line in zip(items, lines, strict=True):
        policy = _policy(item, line, file, sink.problems)
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            found.append((name, policy, file, line))
    return found


def _policy(node: Any, line: int | None, file: str, problems: list[PolicyProblem]) -> Policy | None:
    raw_name = node.get("name") if isinstance(node, dict) else None
    sink = Sink(file, raw_name if isinstance(raw_name, str) else None, problems)
    if not isinstance(node, dict):
        sink.add(f"each policy must be a mapping, got {describe(node)}", line)
        return None
    before = sink.count
    spec = Fields(node, sink, "a policy", POLICY_KEYS)
    spec.require("name", "a policy")
    spec.require("resource", "a policy")
    name = spec.text("name")
    if name is not None and not NAME.fullmatch(name):
        sink.add(
            f"policy name {name!r} must be letters, digits, '-', '_' or '.', at most 128",
            spec.line_for("name"),
        )
    kind = _kind(spec)
    description = spec.text("description", default="")
    enabled = spec.boolean("enabled", default=True)
    mode = spec.text("mode", default="report", choices=[m.value for m in Mode])
    risk = spec.text("risk", default="medium", choices=[r.value for r in Risk])
    schedule, notice, limits = _schedule(spec), _notice(spec), _limits(spec)
    rollback = _rollback(spec)
    if kind is None:
        return None  # filters and actions cannot be checked without the kind
    raw_filters = spec.raw("filters")
    filters = parse_filter_list(
        [] if raw_filters is None else raw_filters,
        spec.line_for("filters"),
        ParseContext(kind, sink),
        "filters",
    )
    action = _action(spec, kind, Mode(mode) if mode else Mode.REPORT)
    if schedule is not None and notice is not None and notice.notify and notice.grace_days:
        # A scheduled run acts in the window just after its cron fires; a grace period
        # of days would end long after that window, and every action would be blocked.
        sink.add(
            f"a policy with a schedule acts just after its cron fires, so it cannot also "
            f"wait {notice.grace_days} day(s) of owner notice; use 'grace-days: 0' or no "
            "schedule",
            spec.line_for("notice"),
        )
    if (
        sink.count > before
        or name is None
        or description is None
        or enabled is None
        or mode is None
        or risk is None
        or action is None
        or notice is None
        or limits is None
        or rollback is None
    ):
        return None
    return Policy(
        name=name,
        kind=kind,
        filters=And(tuple(filters)),
        action=action,
        mode=Mode(mode),
        schedule=schedule,
        notice=notice,
        limits=limits,
        rollback=rollback,
        risk=Risk(risk),
        description=description.strip(),
        enabled=enabled,
        source_file=file,
        source_line=line if line is not None else spec.line,
    )


def _kind(spec: Fields) -> ResourceKind | None:
    word = spec.text("resource")
    if word is None:
        return None
    try:
        return ResourceKind.parse(word)
    except ValueError as exc:
        spec.sink.add(str(exc), spec.line_for("resource"))
        return None


def _action(spec: Fields, kind: ResourceKind, mode: Mode) -> ActionSpec | None:
    if spec.has("action") and spec.has("actions"):
        spec.sink.add("give 'action' or 'actions', not both", spec.line_for("actions"))
        return None
    key = "actions" if spec.has("actions") else "action"
    node, line = spec.raw(key), spec.line_for(key)
    if node is None:
        if not spec.has(key):
            return ActionSpec("report")  # Custodian: a policy without actions reports
        return _bad_action(spec, node, line)
    if key == "actions":
        if not isinstance(node, list) or len(node) != 1:
            spec.sink.add(
                "'actions' must be a list of exactly one action (one action per "
                f"policy), got {describe(node)}",
                line,
            )
            return None
        node = node[0]
    if isinstance(node, str):
        word, given = node, {}
    elif isinstance(node, dict) and isinstance(node.get("type"), str):
        word, given = node["type"], {str(k): v for k, v in node.items() if k != "type"}
    else:
        return _bad_action(spec, node, line)
    action = find_action(word)
    if action is None or action.undo_only:
        usable = [n for n, a in ACTIONS.items() if not a.undo_only] + list(ALIASES)
        why = f" ('{word}' is an undo step, not for policies)" if action else ""
        spec.sink.add(unknown(word, "action", usable) + why, line)
        return None
    rule = action.rule(kind)
    if rule is None:
        kinds = ", ".join(sorted(k.value for k in action.kinds))
        spec.sink.add(
            f"action '{word}' does not apply to kind '{kind.value}'; it applies to: {kinds}", line
        )
        return None
    try:
        params = action.params.model_validate(given)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "parameters"
            if error["type"] == "extra_forbidden":
                known = [str(f.alias or n) for n, f in action.params.model_fields.items()]
                message = unknown(where, "parameter", known, f" of action '{word}'")
            else:
                message = f"action '{word}' parameter '{where}': {error['msg']}"
            spec.sink.add(message, line)
        return None
    result = ActionSpec(action.name, params)
    if mode is Mode.AUTO and action.changes:
        if rule.backup is not Backup.NONE and not result.backup_enabled:
            spec.sink.add(
                f"action '{word}' on mode auto needs a backup (backup: false given)", line
            )
            return None
        if rule.inverse is None:
            spec.sink.add(
                f"action '{word}' has no inverse for kind '{kind.value}'; mode auto "
                "needs a reversible action, use mode approval",
                line,
            )
            return None
    return result


def _bad_action(spec: Fields, node: Any, line: int | None) -> ActionSpec | None:
    spec.sink.add("an action is a name or a mapping with 'type:', got " + describe(node), line)
    return None


def _section(spec: Fields, key: str, allowed: tuple[str, ...]) -> Fields | None:
    node = spec.raw(key)
    if not isinstance(node, dict):
        spec.sink.add(f"'{key}' must be a mapping, got {describe(node)}", spec.line_for(key))
        return None
    return Fields(node, spec.sink, f"'{key}'", allowed)


def _schedule(spec: Fields) -> Schedule | None:
    if not spec.has("schedule"):
        return None
    section = _section(spec, "schedule", ("cron", "timezone"))
    if section is None or not section.require("cron", "'schedule'"):
        return None
    cron, zone = section.text("cron"), section.text("timezone", default="UTC")
    if cron is None or zone is None:
        return None
    try:
        return Schedule(cron, zone)
    except ValueError as exc:
        spec.sink.add(str(exc), section.line)
        return None


def _notice(spec: Fields) -> Notice | None:
    if not spec.has("notice"):
        return Notice()
    section = _section(spec, "notice", ("notify", "grace-days"))
    if section is None:
        return None
    notify = section.boolean("notify", default=True)
    grace = section.integer("grace-days", default=0, minimum=0, maximum=90)
    return Notice(notify, grace) if notify is not None and grace is not None else None


def _limits(spec: Fields) -> Limits | None:
    if not spec.has("limits"):
        return Limits()
    section = _section(spec, "limits", ("max-actions-per-run", "max-percent-of-fleet"))
    if section is None:
        return None
    before = section.sink.count
    count = section.integer("max-actions-per-run", minimum=1, maximum=100_000)
    percent = section.number("max-percent-of-fleet")
    try:
        limits = Limits(count, percent)
    except ValueError as exc:
        section.sink.add(str(exc), section.line_for("max-percent-of-fleet"))
        return None
    return limits if section.sink.count == before else None


def _rollback(spec: Fields) -> Rollback | None:
    if not spec.has("rollback"):
        return Rollback()
    section = _section(spec, "rollback", ("window-days", "alarms"))
    if section is None:
        return None
    before = section.sink.count
    days = section.number("window-days")
    alarms = section.raw("alarms")
    if alarms is None:
        alarms = []
    if not isinstance(alarms, list) or not all(isinstance(a, str) and a.strip() for a in alarms):
        section.sink.add(
            "'alarms' must be a list of CloudWatch alarm names", section.line_for("alarms")
        )
        return None
    try:
        rollback = Rollback(days, tuple(a.strip() for a in alarms))
    except ValueError as exc:
        section.sink.add(str(exc), section.line_for("window-days"))
        return None
    return rollback if section.sink.count == before else None
