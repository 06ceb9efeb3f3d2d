"""Filters on measured quantities: a resource's age and its CloudWatch summaries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar

from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.filters import (
    NO_SPECS,
    Evidence,
    Filter,
    ParseContext,
    note,
    register_filter,
)
from backend.domain.policy.spec import Fields, unknown
from backend.domain.policy.truth import Truth
from backend.domain.resources import KIND_METRICS, STATISTICS, MetricSpec, Resource

DAY_SECONDS = 86_400
MAX_METRIC_DAYS = 455  # CloudWatch keeps hourly data for 15 months
COMPARISONS = {
    "lt": "lt", "less-than": "lt", "le": "le", "lte": "le", "gt": "gt", "greater-than": "gt",
    "ge": "ge", "gte": "ge", "eq": "eq", "equal": "eq", "ne": "ne", "not-equal": "ne",
}  # fmt: skip


def compare(op: str, actual: float, expected: float) -> bool:
    if op == "lt":
        return actual < expected
    if op == "le":
        return actual <= expected
    if op == "gt":
        return actual > expected
    if op == "ge":
        return actual >= expected
    if op == "eq":
        return actual == expected
    return actual != expected


def _op(spec: Fields, default: str) -> str | None:
    word = spec.text("op", default=default)
    if word is None:
        return None
    if word not in COMPARISONS:
        spec.sink.add(unknown(word, "op", COMPARISONS), spec.line_for("op"))
        return None
    return COMPARISONS[word]


@register_filter("age")
@dataclass(frozen=True, slots=True)
class AgeFilter(Filter):
    """`{type: age, days: 30, of: created|state-changed, op: gt}`: older than 30 days.

    A resource without the timestamp is UNKNOWN, as a metric never collected: we can call
    it neither old nor young, so `not: [age ...]` cannot select it either.
    """

    KEYS: ClassVar[tuple[str, ...]] = ("days", "of", "op")
    OF: ClassVar[tuple[str, ...]] = ("created", "state-changed")
    # An age is a continuous quantity: "exactly 30 days old" (or not) holds for an instant,
    # so eq/ne would select nearly nothing (or everything). Only orderings make sense.
    OPS: ClassVar[tuple[str, ...]] = ("gt", "ge", "lt", "le")

    days: float
    of: str = "created"
    op: str = "gt"

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        moment = resource.created_at if self.of == "created" else resource.state_changed_at
        key = f"age.{self.of}.days"
        if moment is None:
            note(evidence, key, None)
            note(evidence, f"age.{self.of}.why", f"no {self.of} time recorded")
            # Not FALSE: negation would turn "we don't know" into a match.
            return Truth.UNKNOWN
        if moment.tzinfo is None or moment.utcoffset() is None:
            moment = moment.replace(tzinfo=dt.UTC)  # AWS reports UTC
        age = (ctx.now - moment).total_seconds() / DAY_SECONDS
        note(evidence, key, round(age, 3))
        return Truth.of(compare(self.op, age, self.days))

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        before = pc.sink.count
        spec.require("days", "an age filter")
        days = spec.number("days")
        if days is not None and not 0 <= days <= 36_500:
            pc.problem(f"'days' must be between 0 and 36500, got {days:g}", spec.line_for("days"))
        of = spec.text("of", default="created", choices=cls.OF)
        op = _op(spec, "gt")
        if op is not None and op not in cls.OPS:
            pc.problem(
                f"op '{spec.raw('op')}' does not apply to an age filter; "
                f"expected one of: {', '.join(cls.OPS)}",
                spec.line_for("op"),
            )
        if days is None or of is None or op is None or pc.sink.count > before:
            return None
        return cls(days, of, op)


@register_filter("metrics")
@dataclass(frozen=True, slots=True)
class MetricsFilter(Filter):
    """`{type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5,
    missing-value: 0}`: one summary of one metric over the last `days`.

    Not fetched yet -> UNKNOWN. No datapoints -> `missing-value` if given, else no match.
    """

    KEYS: ClassVar[tuple[str, ...]] = (
        "name", "statistic", "statistics", "days", "period", "op", "value", "missing-value",
    )  # fmt: skip

    spec: MetricSpec
    op: str
    value: float
    missing_value: float | None = None

    @property
    def evidence_key(self) -> str:
        return f"metric.{self.spec.metric}.{self.spec.statistic}.{self.spec.days}d"

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        key = (resource.resource_id, self.spec)
        if key not in ctx.metrics:
            return Truth.UNKNOWN
        actual = ctx.metrics[key]
        if actual is None or actual != actual:  # no datapoints (NaN counts as none)
            if self.missing_value is None:
                note(evidence, self.evidence_key, None)
                note(evidence, f"{self.evidence_key}.why", "no datapoints")
                return Truth.FALSE
            actual = self.missing_value
            note(evidence, f"{self.evidence_key}.missing-value", True)
        note(evidence, self.evidence_key, actual)
        return Truth.of(compare(self.op, actual, self.value))

    def pending(
        self, resource: Resource, ctx: EvaluationContext
    ) -> tuple[Truth, frozenset[MetricSpec]]:
        if (resource.resource_id, self.spec) not in ctx.metrics:
            return Truth.UNKNOWN, frozenset({self.spec})
        return self.evaluate(resource, ctx), NO_SPECS

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        before = pc.sink.count
        for key in ("name", "value"):
            spec.require(key, "a metrics filter")
        name = spec.text("name")
        if spec.has("statistic") and spec.has("statistics"):
            pc.problem("give 'statistic' or 'statistics', not both", spec.line)
        word = "statistics" if spec.has("statistics") else "statistic"
        statistic = spec.text(word, default="Average", choices=STATISTICS)
        days = spec.integer("days", default=14, minimum=1, maximum=MAX_METRIC_DAYS)
        period = spec.integer("period", minimum=1)
        if days is not None and period is not None and period != days * DAY_SECONDS:
            pc.problem(
                f"'period' must equal days * 86400 = {days * DAY_SECONDS} (one summary "
                f"over the window), got {period}",
                spec.line_for("period"),
            )
        op = _op(spec, "lt")
        value = spec.number("value")
        missing = spec.number("missing-value")
        namespace = cls._namespace(name, pc, spec.line_for("name"))
        if (
            pc.sink.count > before
            or name is None
            or statistic is None
            or days is None
            or op is None
            or value is None
            or namespace is None
        ):
            return None
        return cls(MetricSpec(namespace, name, statistic, days), op, value, missing)

    @staticmethod
    def _namespace(name: str | None, pc: ParseContext, line: int | None) -> str | None:
        known = KIND_METRICS.get(pc.kind)
        if known is None:
            with_metrics = ", ".join(sorted(k.value for k in KIND_METRICS))
            pc.problem(
                f"kind '{pc.kind.value}' has no metrics; kinds with metrics: {with_metrics}", line
            )
            return None
        dimension, names = known
        if name is not None and name not in names:
            pc.problem(
                f"metric '{name}' is not available for kind '{pc.kind.value}'; "
                f"available: {', '.join(sorted(names))}",
                line,
            )
            return None
        return dimension.namespace
