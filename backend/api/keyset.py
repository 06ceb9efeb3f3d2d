"""The SQL of one page: rows after a position (keyset), rows after an offset, a capped count.

Order: the sort field in its direction, then the primary key in the same direction; empty
values (NULL) last both ways. Keyset pages read the values first, with a row comparison
`(field, id) > (:value, :id)` (or `<` descending) that an index on (field, id) answers
with a seek, then, if the page is not full yet, the empty values ordered by id. The two
parts carry no NULLS FIRST/LAST clause of their own (the first has no NULL, the second only
NULL), so a plain ascending index serves both directions on PostgreSQL, and the order is
the same on SQLite. Offset pages keep the single query with NULLS LAST.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Select, func, literal, select, tuple_
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from backend.api.cursors import INT32, INT64, Position

Column = ColumnElement[Any] | QueryableAttribute[Any]
Query = Select[*tuple[Any, ...]]


@dataclass(frozen=True)
class Found:
    """One row of a page and where it sits in the order."""

    item: Any  # the entity, or the row (its columns by name) when the query selects columns
    position: Position


@dataclass(frozen=True)
class SortKey:
    """The field a list is ordered by, with the primary key that breaks its ties."""

    column: Column
    key: Column
    descending: bool

    @property
    def is_key(self) -> bool:
        return _expression(self.column).compare(_expression(self.key))

    @property
    def nullable(self) -> bool:
        return not self.is_key and bool(getattr(_expression(self.column), "nullable", True))

    @property
    def kind(self) -> type:
        """The field's Python type: int, float, str or datetime (what a cursor may hold)."""
        column_type: TypeEngine[Any] = _expression(self.column).type
        if isinstance(column_type, TypeDecorator):
            column_type = column_type.impl_instance
        kind = column_type.python_type
        return kind if kind in (int, float, dt.datetime) else str

    def ints(self, dialect: str) -> range:
        """The integers the key and an integer field hold: PostgreSQL's integer is 32-bit."""
        types = [_type(self.key), _type(self.column)]
        narrow = any(t.python_type is int and not isinstance(t, BigInteger) for t in types)
        return INT32 if narrow and dialect == "postgresql" else INT64

    def ordered(self, column: Column) -> Any:
        return column.desc() if self.descending else column.asc()

    def after(self, column: Column, value: Any) -> ColumnElement[bool]:
        found: ColumnElement[bool] = column < value if self.descending else column > value
        return found


def fetch_after(
    session: Session, query: Query, sort: SortKey, after: Position | None, want: int
) -> list[Found]:
    """Up to `want` rows after `after` (from the start when None)."""
    found: list[Found] = []
    if after is None or after.value is not None:
        values = query
        if sort.is_key:
            if after is not None:
                values = values.where(sort.after(sort.key, after.key))
            values = values.order_by(sort.ordered(sort.key))
        else:
            if sort.nullable:
                values = values.where(sort.column.is_not(None))
            if after is not None:
                theirs = tuple_(
                    literal(after.value, _type(sort.column)), literal(after.key, _type(sort.key))
                )
                values = values.where(sort.after(tuple_(sort.column, sort.key), theirs))
            values = values.order_by(sort.ordered(sort.column), sort.ordered(sort.key))
        found = _run(session, values.limit(want), sort)
    if sort.nullable and len(found) < want:
        empty = query.where(sort.column.is_(None))
        if after is not None and after.value is None:
            empty = empty.where(sort.after(sort.key, after.key))
        empty = empty.order_by(sort.ordered(sort.key))
        found += _run(session, empty.limit(want - len(found)), sort)
    return found


def fetch_offset(
    session: Session, query: Query, sort: SortKey, offset: int, want: int
) -> list[Found]:
    """Up to `want` rows after skipping `offset` (OFFSET: the cost grows with it)."""
    order = [sort.ordered(sort.key)]
    if not sort.is_key:
        first = sort.ordered(sort.column)
        order.insert(0, first.nulls_last() if sort.nullable else first)
    return _run(session, query.order_by(*order).limit(want).offset(offset), sort)


def count_upto(session: Session, query: Query, key: Column, cap: int) -> int:
    """How many rows the query has, counting no further than cap + 1."""
    capped = query.with_only_columns(key).order_by(None).limit(cap + 1).subquery()
    return int(session.scalar(select(func.count()).select_from(capped)) or 0)


def _run(session: Session, query: Query, sort: SortKey) -> list[Found]:
    width = len(query.column_descriptions)
    labelled = query.add_columns(sort.column.label("page_value"), sort.key.label("page_key"))
    found: list[Found] = []
    for row in session.execute(labelled):
        item = row[0] if width == 1 else row  # columns: read by name (page_* too, unused)
        found.append(Found(item, Position(row[width], int(row[width + 1]))))
    return found


def _expression(column: Column) -> ColumnElement[Any]:
    return column.expression if isinstance(column, QueryableAttribute) else column


def _type(column: Column) -> TypeEngine[Any]:
    return _expression(column).type
