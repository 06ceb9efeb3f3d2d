"""Policy filters compiled to SQL, for evaluating a stored inventory where it lies.

SQL's NULL is Kleene's UNKNOWN, so the tree of and/or/not maps one to one. Each leaf is
written to give exactly what the Python filter gives (TRUE, FALSE, or UNKNOWN where the
metric summary was never collected). Anything outside the subset below compiles to None,
and the caller evaluates that policy in Python instead: nothing is approximated.

Compiled: value filters on tags, record fields and attribute paths (string equality and
lists, absent/present, regex, numeric comparison of JSON numbers), age, metrics, and the
relations unattached, unassociated, orphaned, backs-ami (PostgreSQL) and no-healthy-targets.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import aliased

from backend.core.models import InventoryPartRow, MetricSummaryRow, ResourceRow
from backend.core.repositories import RELATION_KINDS
from backend.core.sql_relations import RelationJoins, live_volume, part_listed, snapshot_key
from backend.domain.policy.filters import And, Filter, Not, Or
from backend.domain.policy.measures import AgeFilter, MetricsFilter
from backend.domain.policy.model import Policy
from backend.domain.policy.relations import (
    BacksAmi,
    NoHealthyTargets,
    Orphaned,
    Unassociated,
    Unattached,
)
from backend.domain.policy.values import DECIMAL_TEXT, RECORD_FIELDS, ValueFilter
from backend.domain.resources import MetricSpec, ResourceKind

Predicate = ColumnElement[bool]
_NUMERIC_TEXT = re.compile(r"^\s*[-+]?(\d|\.\d|inf|nan)", re.IGNORECASE)
# Regexes that mean the same in Python's re and PostgreSQL's ARE.
_PORTABLE_REGEX = re.compile(r"^[\w\s^$.*+?()|\[\]\\\-:/,{}=@#%&!<>']*$")
_COLUMNS: dict[str, Any] = {
    "state": ResourceRow.state,
    "region": ResourceRow.region,
    "account": ResourceRow.account_id,
    "id": ResourceRow.resource_id,
    "kind": ResourceRow.kind,
}
_PLACEHOLDERS: dict[str, Any] = {
    "{account_id}": ResourceRow.account_id,
    "{region}": ResourceRow.region,
}
_OPS = {"gt": "__gt__", "ge": "__ge__", "lt": "__lt__", "le": "__le__", "eq": "__eq__"}
# Leaves the database keeps as columns (PostgreSQL, migration 0012). A tag's column is its
# text, read by every tag leaf; an attribute's is its text when a JSON string, read by the
# string comparisons and regexes (presence and numbers still read the JSON).
TAG_COLUMNS: dict[str, Any] = {
    "finops:opt-out": ResourceRow.tag_opt_out,
    "finops:schedule": ResourceRow.tag_schedule,
    "env": ResourceRow.tag_env,
}
STRING_COLUMNS: dict[str, Any] = {
    "State.Name": ResourceRow.state_name,
    "InstanceType": ResourceRow.instance_type,
    "VolumeType": ResourceRow.volume_type,
}


class NotCompilableError(Exception):
    """This filter has no exact SQL form here; evaluate its policy in Python."""


def _portable(pattern: str) -> bool:
    """Means the same in Python's re and PostgreSQL's ARE: no flags, no bracket classes
    ([[:digit:]] is a class there, a set here), and no escape but \\d \\s \\w (and their
    negations) or an escaped punctuation mark (\\b is a word boundary here, a backspace
    there)."""
    if not _PORTABLE_REGEX.match(pattern) or "(?" in pattern:
        return False
    if any(x in pattern for x in ("[[:", "[=", "[.")):
        return False
    return all(c in "dDsSwW" or not c.isalnum() for c in re.findall(r"\\(.)", pattern))


def _text_like(value: Any) -> bool:
    """A string Python would compare as text only (not as a number or a boolean)."""
    return (
        isinstance(value, str)
        and not _NUMERIC_TEXT.match(value)
        and value.lower() not in ("true", "false")
    )


class SqlCompiler:
    """Turns a filter tree into a predicate over `ResourceRow` for one dialect."""

    def __init__(
        self,
        dialect: str,
        now: dt.datetime,
        metric_columns: Mapping[MetricSpec, tuple[ColumnElement[Any], ColumnElement[Any]]]
        | None = None,
        on_leaf: Callable[[Filter, Predicate], Predicate] | None = None,
        relations: RelationJoins | None = None,
    ) -> None:
        """`metric_columns`: spec -> (summary row id, value) of a LEFT JOIN the caller made;
        without it a metric filter reads its summary through a correlated subquery.
        `on_leaf`: given each leaf and its predicate, returns what the tree uses in its place
        (the caller can compute each distinct leaf once, in an inner query).
        `relations`: the relations' joins the caller added (sql_relations.py); without them
        a relation reads its subqueries."""
        self.dialect = dialect
        self.relations = relations
        self.now = now
        self.metric_columns = metric_columns or {}
        self.on_leaf = on_leaf
        # jsonb_typeof says 'string'; SQLite's json_type says 'text'
        self.string_type = "string" if dialect == "postgresql" else "text"

    def compile(self, node: Filter) -> Predicate | None:
        try:
            return self._node(node)
        except NotCompilableError:
            return None

    def _node(self, node: Filter) -> Predicate:
        if isinstance(node, And):
            return and_(*[self._node(f) for f in node.filters])
        if isinstance(node, Or):
            return or_(*[self._node(f) for f in node.filters])
        if isinstance(node, Not):
            return not_(self._node(node.filter))
        verdict = type_coerce(self._leaf(node), Boolean)  # a verdict, whatever SQL infers
        return verdict if self.on_leaf is None else self.on_leaf(node, verdict)

    def _leaf(self, node: Filter) -> Predicate:
        if isinstance(node, ValueFilter):
            return self._value(node)
        if isinstance(node, AgeFilter):
            return self._age(node)
        if isinstance(node, MetricsFilter):
            return self._metric(node)
        return self._relation(node)

    # -- values ------------------------------------------------------------------------
    def _path(self, key: str) -> tuple[ColumnElement[Any], ColumnElement[Any] | None]:
        """(text value, JSON type or None when the value is always text)."""
        if key.startswith("tag:"):
            if self.dialect == "postgresql" and key[4:] in TAG_COLUMNS:
                return TAG_COLUMNS[key[4:]], None
            return ResourceRow.tags[key[4:]].as_string(), None
        if key in RECORD_FIELDS:
            return _COLUMNS[key], None
        element = self._element(key)
        if self.dialect == "postgresql":
            kind = func.jsonb_typeof(element)
        else:
            path = "$" + "".join(
                f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in self._parts(key)
            )
            kind = func.json_type(ResourceRow.attributes, path)
        return element.as_string(), kind

    def _string_column(self, key: str) -> ColumnElement[Any] | None:
        """The column holding the attribute's text where it is a JSON string, if kept."""
        return STRING_COLUMNS.get(key) if self.dialect == "postgresql" else None

    def _parts(self, key: str) -> list[str | int]:
        parts: list[str | int] = []
        for part in key.replace("[", ".").replace("]", "").split("."):
            if not part:
                raise NotCompilableError(key)
            parts.append(int(part) if part.isdigit() else part)
        return parts

    def _element(self, key: str) -> ColumnElement[Any]:
        """The JSON value at an attribute path."""
        return ResourceRow.attributes[tuple(self._parts(key))]

    def _value(self, node: ValueFilter) -> Predicate:
        text, json_type = self._path(node.key)
        if node.op in ("eq", "ne") and node.value in _PLACEHOLDERS:
            # `OwnerId: "{account_id}"`: the resource's own account (or region)
            own: Predicate = func.coalesce(
                and_(json_type == self.string_type, text == _PLACEHOLDERS[node.value])
                if json_type is not None
                else text == _PLACEHOLDERS[node.value],
                false(),
            )
            return own if node.op == "eq" else not_(own)
        if node.fold_case or node.normalize or "{" in str(node.value):
            raise NotCompilableError("case folding or placeholders")
        if node.op == "absent":
            return text.is_(None)
        if node.op == "present":
            return text.is_not(None)
        if node.op in ("eq", "ne", "in", "not-in"):
            values = node.value if isinstance(node.value, tuple) else (node.value,)
            if all(_text_like(v) for v in values):
                string = self._string_column(node.key)
                if string is not None:
                    found = string.in_(values) if len(values) > 1 else string == values[0]
                    found = func.coalesce(found, false())
                    return not_(found) if node.op in ("ne", "not-in") else found
                if json_type is not None and self.dialect == "postgresql":
                    # JSON strings compared as JSON: one lookup, where the type test and the
                    # text made two (the hottest leaf of a scan, 40% cheaper).
                    element = self._element(node.key)
                    strings = [
                        cast(literal(json.dumps(v, ensure_ascii=False)), JSONB) for v in values
                    ]
                    found = element.in_(strings) if len(strings) > 1 else element == strings[0]
                else:
                    found = text.in_(values) if len(values) > 1 else text == values[0]
                    if json_type is not None:
                        found = and_(json_type == self.string_type, found)
                found = func.coalesce(found, false())
                return not_(found) if node.op in ("ne", "not-in") else found
            if node.op == "eq" and _is_number(node.value):
                return self._numeric("eq", text, json_type, node.value)
            raise NotCompilableError("non-text equality")
        if node.op in ("regex", "regex-case") and isinstance(node.value, str):
            string = self._string_column(node.key)
            if string is not None:  # NULL unless a JSON string, as the type test was
                return self._regex(node.op == "regex", string, None, node.value)
            return self._regex(node.op == "regex", text, json_type, node.value)
        if node.op in _OPS and _is_number(node.value):
            return self._numeric(node.op, text, json_type, node.value)
        raise NotCompilableError(node.op)

    def _numeric(
        self, op: str, text: ColumnElement[Any], json_type: ColumnElement[Any] | None, value: float
    ) -> Predicate:
        """JSON numbers, and text that is a plain decimal (Python compares it as a number)."""
        compared = getattr(cast(text, Float), _OPS[op])(float(value))
        if self.dialect == "postgresql":
            decimal_text: Predicate = text.op("~")(DECIMAL_TEXT)
        else:
            decimal_text = func.finops_regex_match(DECIMAL_TEXT, text, 0) == 1
        is_text = (
            decimal_text if json_type is None else and_(json_type == self.string_type, decimal_text)
        )
        is_number = false() if json_type is None else json_type.in_(("number", "integer", "real"))
        return func.coalesce(
            case((is_number, compared), (is_text, compared), else_=false()), false()
        )

    def _regex(
        self,
        ignore_case: bool,
        text: ColumnElement[Any],
        json_type: ColumnElement[Any] | None,
        pattern: str,
    ) -> Predicate:
        if self.dialect == "postgresql":
            if not _portable(pattern):
                raise NotCompilableError("regex outside the portable subset")
            # Python's re.match anchors at the start only.
            matched: Predicate = text.op("~*" if ignore_case else "~")(f"^(?:{pattern})")
        else:
            matched = func.finops_regex_match(pattern, text, 1 if ignore_case else 0) == 1
        if json_type is not None:
            matched = and_(json_type == self.string_type, matched)
        return func.coalesce(matched, false())

    # -- time and metrics ----------------------------------------------------------------
    def _age(self, node: AgeFilter) -> Predicate:
        column = ResourceRow.created_at if node.of == "created" else ResourceRow.state_changed_at
        cutoff = self.now - dt.timedelta(days=node.days)
        # age > days  <=>  moment < now - days
        # AgeFilter.from_spec admits only these four (eq/ne on an age are refused).
        flipped = {"gt": "__lt__", "ge": "__le__", "lt": "__gt__", "le": "__ge__"}[node.op]
        # A NULL time compares to NULL (UNKNOWN), as AgeFilter gives: never coalesced to
        # false, which `not` would turn into a match.
        compared: Predicate = getattr(column, flipped)(cutoff)
        return compared

    def _metric(self, node: MetricsFilter) -> Predicate:
        m = MetricSummaryRow
        compared = getattr(m.value, _OPS[node.op])(node.value)
        if node.missing_value is None:
            when_missing: ColumnElement[Any] = false()
        else:
            when_missing = literal(
                bool(getattr(float(node.missing_value), _OPS[node.op])(node.value))
            )
        # No summary row: never collected, UNKNOWN (NULL). A row with NULL value: no data.
        joined = self.metric_columns.get(node.spec)
        if joined is not None:
            row_id, value = joined
            return case(
                (row_id.is_(None), null()),
                (value.is_(None), when_missing),
                else_=getattr(value, _OPS[node.op])(node.value),
            )
        verdict = (
            select(case((m.value.is_(None), when_missing), else_=compared))
            .where(
                m.resource_pk == ResourceRow.id,
                m.namespace == node.spec.namespace,
                m.metric == node.spec.metric,
                m.statistic == node.spec.statistic,
                m.days == node.spec.days,
            )
            .scalar_subquery()
        )
        return verdict

    # -- relations -----------------------------------------------------------------------
    def _relation(self, node: Filter) -> Predicate:
        attrs = ResourceRow.attributes
        if isinstance(node, Unattached):
            if self.dialect == "postgresql":
                count = func.jsonb_array_length(
                    func.coalesce(attrs["Attachments"], func.jsonb("[]"))
                )
            else:
                count = func.coalesce(func.json_array_length(attrs, "$.Attachments"), 0)
            return and_(ResourceRow.state == "available", count == 0)
        if isinstance(node, Unassociated):
            return func.coalesce(attrs["AssociationId"].as_string(), "") == ""
        if isinstance(node, NoHealthyTargets):
            return false()  # target health is not stored: not known is not zero
        if isinstance(node, Orphaned):
            volume_id = attrs["VolumeId"].as_string()
            return case(
                (~self._relations_known(), null()),
                (func.coalesce(volume_id, "") == "", false()),
                else_=self._volume_gone(volume_id),
            )
        if isinstance(node, BacksAmi):
            return case((~self._relations_known(), null()), else_=self._backs_ami())
        raise NotCompilableError(type(node).__name__)

    def _volume_gone(self, volume_id: ColumnElement[Any]) -> Predicate:
        if self.relations is not None:
            return self.relations.volume_gone
        return ~exists().where(live_volume(aliased(ResourceRow), volume_id))

    def _relations_known(self) -> Predicate:
        """A scan has listed the row's region's volumes and AMIs completely (as the Python
        evaluator's `inventoried`): else "no such volume" is not knowledge, and the
        relation is unknown (NULL)."""
        if self.relations is not None:
            return self.relations.listed
        listed = [
            exists().where(part_listed(InventoryPartRow, kind)) for kind in sorted(RELATION_KINDS)
        ]
        return and_(*listed)

    def _backs_ami(self) -> Predicate:
        """The snapshot's key among every AMI's snapshot keys: uncorrelated, so the database
        builds the set once (a correlated form made PostgreSQL loop over AMIs per snapshot)."""
        if self.relations is not None:
            return self.relations.backed
        return snapshot_key().in_(ami_snapshot_keys(self.dialect))


def ami_snapshot_keys(dialect: str) -> Any:
    """Every live AMI's snapshot keys (account/region/snapshot id): one text key each, so
    that PostgreSQL hashes the set (a row value is not hashed)."""
    a = aliased(ResourceRow)
    if dialect == "postgresql":
        entries = (
            func.jsonb_array_elements(a.attributes["BlockDeviceMappings"])
            .table_valued("value")
            .alias("bdm")
        )
        snapshot: ColumnElement[Any] = entries.c.value.op("->")("Ebs").op("->>")("SnapshotId")
    else:
        entries = (
            func.json_each(a.attributes, "$.BlockDeviceMappings").table_valued("value").alias("bdm")
        )
        snapshot = func.json_extract(entries.c.value, "$.Ebs.SnapshotId")
    return (
        select((a.account_id + "/" + a.region + "/" + snapshot).label("key"))
        .select_from(a)
        .join(entries, true())
        .where(a.kind == ResourceKind.AMI.value, a.gone_at.is_(None), snapshot.is_not(None))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def leaves(node: Filter) -> Iterable[Filter]:
    """The leaf filters of a tree, left to right."""
    if isinstance(node, And | Or):
        for child in node.filters:
            yield from leaves(child)
    elif isinstance(node, Not):
        yield from leaves(node.filter)
    else:
        yield node


def tags_read(dialect: str, policies: Iterable[Policy]) -> tuple[dict[str, Any], bool]:
    """Where the policies' tags are read from: the kept ones from their columns
    (PostgreSQL; key -> column, in a stable order), and whether any other needs `tags`."""
    keys = {
        leaf.key[4:]
        for p in policies
        for leaf in leaves(p.filters)
        if isinstance(leaf, ValueFilter) and leaf.key.startswith("tag:")
    }
    if dialect != "postgresql":
        return {}, bool(keys)
    kept = {key: TAG_COLUMNS[key] for key in sorted(keys) if key in TAG_COLUMNS}
    return kept, bool(keys - set(kept))
