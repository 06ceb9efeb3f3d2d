"""Reading policy YAML: line-aware parsing, problem collection and typed field access.

Every problem is collected with its file, policy and line, so that one run of the validator
shows the author everything that is wrong, not the first thing.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_EXPANDED_NODES = 200_000  # a YAML alias bomb expands exponentially; refuse it early


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy file; `message` says what was expected."""

    file: str
    policy: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        who = f" policy '{self.policy}':" if self.policy else ""
        return f"{where}:{who} {self.message}"


class PolicyValidationError(ValueError):
    """A pack with any problem is refused whole: half a pack could act unexpectedly."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the policy pack:\n{lines}")


class YMap(dict[Any, Any]):
    """A YAML mapping that remembers where it and each of its keys stood (1-based lines)."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


_MERGE_TAG = "tag:yaml.org,2002:merge"


class YList(list[Any]):
    """A YAML sequence that remembers its line and the line of each item."""

    __slots__ = ("item_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def _construct_map(loader: yaml.SafeLoader, node: MappingNode) -> YMap:
    own_count = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # resolve `<<:` merge keys: theirs first, then our own
    merged = len(node.value) - own_count
    result = YMap(node.start_mark.line + 1)
    own: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in own
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be text", key_node.start_mark
            ) from None
        if duplicate:
            # PyYAML silently keeps the last one; a policy author never means that. A key
            # that overrides one merged in with `<<:` is what merging is for.
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        if index >= merged:
            own.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: yaml.SafeLoader, node: SequenceNode) -> YList:
    result = YList(node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_lines.append(item.start_mark.line + 1)
    return result


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    # Dates stay text: attributes hold ISO strings, and a date object would compare with
    # nothing. Mappings and sequences keep their lines.
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors = {
        **yaml.SafeLoader.yaml_constructors,
        "tag:yaml.org,2002:map": _construct_map,
        "tag:yaml.org,2002:seq": _construct_seq,
    }


class YamlError(Exception):
    """Text that is not a readable YAML document; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def parse_yaml(text: str) -> Any:
    """Parse one YAML document into YMap/YList/scalars; raise YamlError when unreadable."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise YamlError(
                f"document expands to more than {MAX_EXPANDED_NODES} nodes (YAML aliases)", None
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        text_ = " ".join(part for part in (exc.context, exc.problem) if part)
        raise YamlError(f"malformed YAML: {text_ or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"malformed YAML: {exc}", None) from None
    except RecursionError:
        raise YamlError("YAML nested too deeply", None) from None
    finally:
        loader.dispose()


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once here; construction refuses it later
    total = 1
    if isinstance(node, SequenceNode):
        total += sum(_expanded_size(item, memo) for item in node.value)
    elif isinstance(node, MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif not isinstance(node, ScalarNode):  # pragma: no cover - PyYAML has no other node kind
        raise TypeError(type(node))
    memo[id(node)] = total
    if total > MAX_EXPANDED_NODES:
        raise YamlError(
            f"document expands to more than {MAX_EXPANDED_NODES} nodes (YAML aliases)", None
        )
    return total


@dataclass(slots=True)
class Sink:
    """Collects the problems of one file, naming the policy being read."""

    file: str
    policy: str | None = None
    problems: list[PolicyProblem] = field(default_factory=list)

    def add(self, message: str, line: int | None) -> None:
        self.problems.append(PolicyProblem(self.file, self.policy, line, message))

    @property
    def count(self) -> int:
        return len(self.problems)


def line_of(value: Any, default: int | None = None) -> int | None:
    return value.line if isinstance(value, YMap | YList) else default


def describe(value: Any) -> str:
    """How a wrong value is named in a message: its YAML type and, if short, itself."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"{value} (not a finite number)"  # YAML's .nan and .inf
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text {value!r}" if len(value) <= 40 else "a long text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def unknown(word: str, what: str, known: Iterable[str], where: str = "") -> str:
    """`unknown WHAT 'x' WHERE; expected one of: ...`, suggesting a close name if any."""
    names = sorted(known)
    close = difflib.get_close_matches(word, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} '{word}'{where}; expected one of: {', '.join(names)}{hint}"


def canonical(key: str) -> str:
    # `grace_days` and `grace-days` are the same key: YAML authors mix the two styles.
    return key.replace("_", "-")


class Fields:
    """Typed access to one mapping of a known shape; wrong keys and types go to the sink."""

    def __init__(
        self, node: Mapping[Any, Any], sink: Sink, what: str, allowed: Collection[str]
    ) -> None:
        self.sink = sink
        self.line = line_of(node)
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int | None] = {}
        key_lines = node.key_lines if isinstance(node, YMap) else {}
        for key, value in node.items():
            line = key_lines.get(key, self.line)
            if not isinstance(key, str):
                sink.add(f"keys in {what} must be text, got {describe(key)}", line)
                continue
            name = canonical(key)
            if name not in allowed:
                sink.add(unknown(key, "key", allowed, f" in {what}"), line)
            elif name in self.values:
                sink.add(f"key '{key}' given twice in {what}", line)
            else:
                self.values[name] = value
                self.lines[name] = line

    def has(self, key: str) -> bool:
        return key in self.values

    def line_for(self, key: str) -> int | None:
        return self.lines.get(key, self.line)

    def raw(self, key: str) -> Any:
        return self.values.get(key)

    def _wrong(self, key: str, expected: str) -> None:
        value = self.values[key]
        # YAML 1.1 reads yes/no/on/off as booleans: `name: off` is not text
        quote = isinstance(value, bool) and "text" in expected
        hint = "; quote it to make it text" if quote else ""
        message = f"'{key}' must be {expected}, got {describe(value)}{hint}"
        self.sink.add(message, self.line_for(key))

    def require(self, key: str, what: str) -> bool:
        if key in self.values:
            return True
        self.sink.add(f"missing required key '{key}' in {what}", self.line)
        return False

    def text(
        self, key: str, default: str | None = None, choices: Collection[str] | None = None
    ) -> str | None:
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, str) or not value.strip():
            self._wrong(key, "a non-empty text")
            return None
        if choices is not None and value not in choices:
            self.sink.add(unknown(value, "value", choices, f" for '{key}'"), self.line_for(key))
            return None
        return value

    def integer(
        self,
        key: str,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong(key, "a whole number")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.sink.add(
                f"'{key}' must be between {minimum} and {maximum}, got {value}", self.line_for(key)
            )
            return None
        return value

    def number(self, key: str, default: float | None = None) -> float | None:
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            self._wrong(key, "a number")
            return None
        return float(value)

    def boolean(self, key: str, default: bool) -> bool | None:
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, bool):
            self._wrong(key, "true or false")
            return None
        return value
