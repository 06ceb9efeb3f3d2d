"""The value filter: compare one field of a resource, Custodian style.

- "State.Name": running                          # shorthand: eq
- "tag:finops:opt-out": absent                   # absent / present
- {type: value, key: "tag:env", op: ne, value: prod}
- {type: tag, key: env, op: in, value: [dev, test]}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.filters import Evidence, Filter, ParseContext, note, register_filter
from backend.domain.policy.spec import Fields, describe, unknown
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource

OPS = {
    "eq": "eq", "equal": "eq", "ne": "ne", "not-equal": "ne", "in": "in", "not-in": "not-in",
    "ni": "not-in", "regex": "regex", "regex-case": "regex-case", "gt": "gt",
    "greater-than": "gt", "ge": "ge", "gte": "ge", "lt": "lt", "less-than": "lt", "le": "le",
    "lte": "le",
}  # fmt: skip
ORDERING = frozenset({"gt", "ge", "lt", "le"})
RECORD_FIELDS: dict[str, Callable[[Resource], str]] = {
    "state": lambda r: r.state,
    "region": lambda r: r.region,
    "account": lambda r: r.account_id,
    "id": lambda r: r.resource_id,
    "kind": lambda r: r.kind.value,
}
_MISSING = object()


def lookup(resource: Resource, key: str) -> Any:
    """The value at `key`, or None when absent: `tag:K`, a record field, or a dotted path
    into the attributes (`State.Name`, `Attachments[0].State` or `Attachments.0.State`)."""
    if key.startswith("tag:"):
        return resource.tags.get(key[4:])
    if key in RECORD_FIELDS:
        return RECORD_FIELDS[key](resource)
    current: Any = resource.attributes
    for part in key.replace("[", ".").replace("]", "").split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        elif isinstance(current, list | tuple) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
        if current is _MISSING:
            return None
    return current


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _align(actual: Any, expected: Any) -> tuple[Any, Any]:
    """Make the two sides comparable: numeric text against a number becomes a number, and
    'true'/'false' text against a boolean becomes a boolean (tags are always text)."""
    if isinstance(actual, str) and _is_number(expected):
        actual = _to_number(actual)
    elif isinstance(expected, str) and _is_number(actual):
        expected = _to_number(expected)
    elif isinstance(actual, str) and isinstance(expected, bool):
        actual = {"true": True, "false": False}.get(actual.lower(), actual)
    return actual, expected


# Text read as a number: a plain ASCII decimal, small enough that every database reads it
# as a double too (no '1_000', '٣', 'inf', 'nan' or '1e400', which Python's float() takes).
# The SQL evaluator tests the same pattern, so both agree on what is a number.
DECIMAL_TEXT = (
    r"^[ \t\n\r\f\v]*[-+]?([0-9]{1,200}(\.[0-9]{0,200})?|\.[0-9]{1,200})"
    r"([eE][-+]?[0-9]{1,2})?[ \t\n\r\f\v]*$"
)
_DECIMAL = re.compile(DECIMAL_TEXT)


def _to_number(text: str) -> Any:
    return float(text) if _DECIMAL.match(text) else text


def _equal(actual: Any, expected: Any) -> bool:
    actual, expected = _align(actual, expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return type(actual) is type(expected) and bool(actual == expected)


def _ordered(op: str, actual: Any, expected: Any) -> bool:
    actual, expected = _align(actual, expected)
    both_numbers = _is_number(actual) and _is_number(expected)
    if not (both_numbers or (isinstance(actual, str) and isinstance(expected, str))):
        return False  # 'abc' > 5 means nothing: fail safe
    if op == "gt":
        return bool(actual > expected)
    if op == "ge":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    return bool(actual <= expected)


@functools.lru_cache(maxsize=1024)
def _pattern(regex: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


@register_filter("value", "tag")
@dataclass(frozen=True, slots=True)
class ValueFilter(Filter):
    """Compare one field. `op` is canonical: eq ne in not-in regex regex-case gt ge lt le
    absent present. `regex` is Python's re.match: anchored at the start only and ignoring
    case, exactly as Custodian's; `regex-case` minds case. `{account_id}` and `{region}` in
    a text value are the resource's own."""

    KEYS: ClassVar[tuple[str, ...]] = ("key", "value", "op", "value-type", "case")

    key: str
    op: str
    value: Any = None  # a scalar; a tuple for in / not-in; None for absent / present
    fold_case: bool = False  # `case: insensitive`
    normalize: bool = False  # `value_type: normalize`: strip and lower-case both sides

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        actual = lookup(resource, self.key)
        note(evidence, self.key, actual)
        if self.op == "absent":
            return Truth.of(actual is None)
        if self.op == "present":
            return Truth.of(actual is not None)
        if actual is None:
            # absent is not equal to prod, and is in no list; it is nothing else
            return Truth.of(self.op in ("ne", "not-in"))
        actual = self._fold(actual)
        expected = self._expected(resource)
        if self.op == "eq":
            return Truth.of(_equal(actual, expected))
        if self.op == "ne":
            return Truth.of(not _equal(actual, expected))
        if self.op in ("in", "not-in"):
            found = any(_equal(actual, item) for item in expected)
            return Truth.of(found if self.op == "in" else not found)
        if self.op in ("regex", "regex-case"):
            if not isinstance(actual, str):
                return Truth.FALSE
            pattern = _pattern(expected, self.op == "regex")
            return Truth.of(pattern.match(actual) is not None)
        return Truth.of(_ordered(self.op, actual, expected))

    def _fold(self, value: Any) -> Any:
        if isinstance(value, str):
            if self.normalize:
                return value.strip().lower()
            if self.fold_case:
                return value.casefold()
        return value

    def _expected(self, resource: Resource) -> Any:
        if isinstance(self.value, tuple):
            return tuple(self._fold(self._fill(v, resource)) for v in self.value)
        if self.op in ("regex", "regex-case"):
            return self._fill(self.value, resource)  # patterns are not case-folded
        return self._fold(self._fill(self.value, resource))

    @staticmethod
    def _fill(value: Any, resource: Resource) -> Any:
        if isinstance(value, str) and "{" in value:
            return value.replace("{account_id}", resource.account_id).replace(
                "{region}", resource.region
            )
        return value

    @classmethod
    def shorthand(cls, key: str, value: Any, pc: ParseContext, line: int | None) -> Filter | None:
        """`{"State.Name": running}` means eq; `{"tag:x": absent}` means absent."""
        if isinstance(value, Mapping | list):
            pc.problem(
                f"shorthand filter '{key}' takes one value, got {describe(value)}; for a "
                f"list write {{type: value, key: '{key}', op: in, value: [...]}}",
                line,
            )
            return None
        return cls._build(key, None, value, False, False, pc, line)

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        is_tag = spec.raw("type") == "tag"
        before = pc.sink.count
        if not spec.require("key", "a value filter"):
            return None
        key = spec.text("key")
        op = spec.text("op")
        value_type = spec.text("value-type", choices=("normalize",))
        case = spec.text("case", default="sensitive", choices=("sensitive", "insensitive"))
        if not spec.has("value"):
            spec.sink.add(
                "missing required key 'value' in a value filter (a value, or the "
                "words absent / present)",
                spec.line,
            )
        if key is None or pc.sink.count > before:
            return None
        if is_tag:
            key = f"tag:{key}"
        return cls._build(
            key,
            op,
            spec.raw("value"),
            value_type == "normalize",
            case == "insensitive",
            pc,
            spec.line_for("value"),
        )

    @classmethod
    def _build(
        cls,
        key: str,
        op_word: str | None,
        value: Any,
        normalize: bool,
        fold: bool,
        pc: ParseContext,
        line: int | None,
    ) -> Filter | None:
        if key in ("tag:", "") or key.strip() != key:
            pc.problem(f"filter key {key!r} is not a field name or tag:KEY", line)
            return None
        op = OPS.get(op_word or "eq")
        if op is None:
            pc.problem(unknown(op_word or "", "op", OPS), line)
            return None
        if value in ("absent", "present"):
            if op not in ("eq", "ne"):
                pc.problem(f"'{value}' goes with op eq or ne, not '{op_word}'", line)
                return None
            negate = op == "ne"
            op = "absent" if (value == "absent") != negate else "present"
            return cls(key, op, None)
        error = _value_error(op, value)
        if error:
            pc.problem(f"filter on '{key}': {error}", line)
            return None
        if op in ("in", "not-in"):
            value = tuple(value)
        return cls(key, op, value, fold, normalize)


def _value_error(op: str, value: Any) -> str | None:
    scalar = isinstance(value, str | int | float | bool) and value == value
    if op in ("in", "not-in"):
        if not isinstance(value, list) or not value:
            return f"op '{op}' needs a non-empty list of values, got {describe(value)}"
        if not all(isinstance(v, str | int | float | bool) for v in value):
            return f"op '{op}' needs a list of texts, numbers or booleans"
        return None
    if op in ("regex", "regex-case"):
        if not isinstance(value, str):
            return f"op '{op}' needs a pattern (text), got {describe(value)}"
        try:
            re.compile(value)
        except re.error as exc:
            return f"bad regex {value!r}: {exc}"
        except (OverflowError, RecursionError):  # a repeat count or a nesting past Python's
            return f"bad regex {_short(value)}: too large or nested too deeply to compile"
        return None
    if op in ORDERING and (not scalar or isinstance(value, bool)):
        return f"op '{op}' needs a number or a text, got {describe(value)}"
    if not scalar:
        return f"op '{op}' needs a single text, number or boolean, got {describe(value)}"
    return None


def _short(pattern: str) -> str:
    return repr(pattern) if len(pattern) <= 60 else repr(pattern[:57] + "...")
