"""Filter trees: the base class, the registry, the parser from YAML and the combinators.

Each filter is a frozen dataclass whose fields say everything it does, so that a SQL
compiler can translate the same tree that `evaluate` interprets. The value, age, metrics and
relation filters live in `values.py`, `measures.py` and `relations.py` and register here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.spec import Fields, Sink, YList, YMap, describe, line_of, unknown
from backend.domain.policy.truth import Truth
from backend.domain.resources import MetricSpec, Resource, ResourceKind

Evidence = dict[str, Any]
NO_SPECS: frozenset[MetricSpec] = frozenset()
MAX_DEPTH = 32  # deeper trees are a mistake or an attack, and would exhaust the stack


class Filter(ABC):
    """A node of a filter tree."""

    __slots__ = ()
    kinds: ClassVar[frozenset[ResourceKind] | None] = None  # None: every kind
    KEYS: ClassVar[tuple[str, ...]] = ()  # the keys its mapping form takes besides `type`
    bare: ClassVar[bool] = False  # usable as a plain word in a filter list (`- unattached`)

    @abstractmethod
    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        """Decide for one resource; facts looked at are written into `evidence`."""

    def children(self) -> tuple[Filter, ...]:
        return ()

    def walk(self) -> Iterator[Filter]:
        yield self
        for child in self.children():
            yield from child.walk()

    def pending(
        self, resource: Resource, ctx: EvaluationContext
    ) -> tuple[Truth, frozenset[MetricSpec]]:
        """The result, and when UNKNOWN the metric specs whose values would settle it."""
        return self.evaluate(resource, ctx), NO_SPECS

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        """Build from a mapping; problems go to `pc.sink`, None when there were any."""

    @classmethod
    def shorthand(cls, key: str, value: Any, pc: ParseContext, line: int | None) -> Filter | None:
        """Build from a one-key mapping `{key: value}`; only the value filter has this form."""
        raise NotImplementedError(cls.__name__)


F = TypeVar("F", bound=type[Filter])
FILTER_TYPES: dict[str, type[Filter]] = {}


def register_filter(*names: str) -> Callable[[F], F]:
    def register(cls: F) -> F:
        for name in names:
            if name in FILTER_TYPES:
                raise ValueError(f"filter type {name!r} registered twice")
            FILTER_TYPES[name] = cls
        return cls

    return register


def note(evidence: Evidence | None, key: str, value: Any) -> None:
    if evidence is not None:
        evidence[key] = value


@dataclass(slots=True)
class ParseContext:
    kind: ResourceKind
    sink: Sink
    depth: int = 0

    def problem(self, message: str, line: int | None) -> None:
        self.sink.add(message, line)

    def deeper(self) -> ParseContext:
        return ParseContext(self.kind, self.sink, self.depth + 1)


COMBINATORS = ("and", "or", "not")


def parse_filter_list(node: Any, line: int | None, pc: ParseContext, what: str) -> list[Filter]:
    """Parse a YAML list of filters; items with problems are left out (and reported)."""
    if not isinstance(node, list):
        pc.problem(f"'{what}' must be a list of filters, got {describe(node)}", line)
        return []
    lines = node.item_lines if isinstance(node, YList) else [line] * len(node)
    parsed = [
        parse_filter(item, item_line, pc) for item, item_line in zip(node, lines, strict=True)
    ]
    return [f for f in parsed if f is not None]


def parse_filter(node: Any, line: int | None, pc: ParseContext) -> Filter | None:
    """One filter in any of its YAML forms: a word, `{type: ...}`, or a one-key shorthand."""
    if pc.depth > MAX_DEPTH:
        pc.problem(f"filters nested deeper than {MAX_DEPTH} levels", line)
        return None
    line = line_of(node, line)
    if isinstance(node, str):
        cls = FILTER_TYPES.get(node)
        if cls is None:
            pc.problem(unknown(node, "filter type", FILTER_TYPES), line)
            return None
        if not cls.bare:
            pc.problem(
                f"filter '{node}' needs parameters; write it as a mapping with 'type: {node}'", line
            )
            return None
        return _check_kind(cls, node, cls.from_spec(_empty(pc, line), pc), pc, line)
    if not isinstance(node, Mapping) or not node:
        pc.problem(f"a filter must be a mapping or a filter name, got {describe(node)}", line)
        return None
    if "type" in node:
        type_name = node["type"]
        if not isinstance(type_name, str):
            pc.problem(f"filter 'type' must be text, got {describe(type_name)}", line)
            return None
        cls = FILTER_TYPES.get(type_name)
        if cls is None or type_name in COMBINATORS:
            pc.problem(
                unknown(type_name, "filter type", set(FILTER_TYPES) - set(COMBINATORS)), line
            )
            return None
        fields = Fields(node, pc.sink, f"filter '{type_name}'", (*cls.KEYS, "type"))
        return _check_kind(cls, type_name, cls.from_spec(fields, pc), pc, line)
    if len(node) != 1:
        keys = ", ".join(repr(k) for k in node)
        pc.problem(
            f"a filter mapping needs 'type:' unless it is a one-key shorthand such as "
            f"{{'State.Name': running}}; got keys {keys}",
            line,
        )
        return None
    ((key, value),) = node.items()
    if key in COMBINATORS:
        if isinstance(value, list) and not value:
            pc.problem(f"'{key}' needs at least one filter", line)
            return None
        items = parse_filter_list(value, line, pc.deeper(), str(key))
        if not isinstance(value, list) or len(items) != len(value):
            return None  # a child had a problem, already reported
        if key == "not":
            # Custodian's `not: [a, b]` means not (a and b)
            return Not(items[0] if len(items) == 1 else And(tuple(items)))
        return And(tuple(items)) if key == "and" else Or(tuple(items))
    if not isinstance(key, str):
        pc.problem(f"a filter key must be text, got {describe(key)}", line)
        return None
    return FILTER_TYPES["value"].shorthand(key, value, pc, line)


def _empty(pc: ParseContext, line: int | None) -> Fields:
    return Fields(YMap(line or 0), pc.sink, "filter", ())


def _check_kind(
    cls: type[Filter], name: str, built: Filter | None, pc: ParseContext, line: int | None
) -> Filter | None:
    if cls.kinds is not None and pc.kind not in cls.kinds:
        kinds = ", ".join(sorted(k.value for k in cls.kinds))
        pc.problem(
            f"filter '{name}' does not apply to kind '{pc.kind.value}'; it applies to: {kinds}",
            line,
        )
        return None
    return built


@register_filter("and")
@dataclass(frozen=True, slots=True)
class And(Filter):
    filters: tuple[Filter, ...]

    def children(self) -> tuple[Filter, ...]:
        return self.filters

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        result = Truth.TRUE
        for child in self.filters:
            truth = child.evaluate(resource, ctx, evidence)
            if truth is Truth.FALSE:
                return truth  # settled: the rest cannot change it
            result = result & truth
        return result

    def pending(
        self, resource: Resource, ctx: EvaluationContext
    ) -> tuple[Truth, frozenset[MetricSpec]]:
        result, needed = Truth.TRUE, NO_SPECS
        for child in self.filters:
            truth, specs = child.pending(resource, ctx)
            if truth is Truth.FALSE:
                return truth, NO_SPECS
            result, needed = result & truth, needed | specs
        return result, needed if result is Truth.UNKNOWN else NO_SPECS

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        raise NotImplementedError("combinators are parsed by parse_filter")


@register_filter("or")
@dataclass(frozen=True, slots=True)
class Or(Filter):
    filters: tuple[Filter, ...]

    def children(self) -> tuple[Filter, ...]:
        return self.filters

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        result = Truth.FALSE
        for child in self.filters:
            truth = child.evaluate(resource, ctx, evidence)
            if truth is Truth.TRUE:
                return truth
            result = result | truth
        return result

    def pending(
        self, resource: Resource, ctx: EvaluationContext
    ) -> tuple[Truth, frozenset[MetricSpec]]:
        result, needed = Truth.FALSE, NO_SPECS
        for child in self.filters:
            truth, specs = child.pending(resource, ctx)
            if truth is Truth.TRUE:
                return truth, NO_SPECS
            result, needed = result | truth, needed | specs
        return result, needed if result is Truth.UNKNOWN else NO_SPECS

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        raise NotImplementedError("combinators are parsed by parse_filter")


@register_filter("not")
@dataclass(frozen=True, slots=True)
class Not(Filter):
    filter: Filter

    def children(self) -> tuple[Filter, ...]:
        return (self.filter,)

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        return ~self.filter.evaluate(resource, ctx, evidence)

    def pending(
        self, resource: Resource, ctx: EvaluationContext
    ) -> tuple[Truth, frozenset[MetricSpec]]:
        truth, specs = self.filter.pending(resource, ctx)
        return ~truth, specs

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        raise NotImplementedError("combinators are parsed by parse_filter")
