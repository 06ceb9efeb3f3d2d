"""Lists: limit/offset with the total, and sorting by a named field (`-name` descends).

Every ordering ends with the primary key, so that pages neither repeat nor skip rows.
Empty values (an unpriced saving) sort last both ways, on every database: PostgreSQL and
SQLite disagree about where NULL goes by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from backend.api.problems import Problem

T = TypeVar("T")
Column = ColumnElement[Any] | QueryableAttribute[Any]
MAX_LIMIT = 500
MAX_OFFSET = 2**63 - 1  # OFFSET is a signed 64-bit integer in PostgreSQL and SQLite


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit, offset)


Paging = Annotated[PageParams, Depends(page_params)]
SortParam = Annotated[
    str | None, Query(pattern=r"^-?[a-z_]+$", description="A field; '-field' sorts descending.")
]


def parse_sort(sort: str | None, allowed: Sequence[str], default: str) -> tuple[str, bool]:
    """(field, descending); an unknown field is a 422 problem that lists the allowed ones."""
    text = sort or default
    field, descending = text.lstrip("-"), text.startswith("-")
    if field not in allowed:
        raise Problem(
            422,
            f"cannot sort by {field!r}; sort by one of: {', '.join(allowed)}",
            kind="invalid-sort",
            title="Invalid request",
        )
    return field, descending


def paginate_query(
    session: Session,
    query: Select[*tuple[Any, ...]],
    page: PageParams,
    sort: str | None,
    columns: Mapping[str, Column],
    key: Column,
    default: str = "-id",
) -> tuple[list[Any], int]:
    """The rows of one page (scalars when the query selects one entity) and the total."""
    field, descending = parse_sort(sort, list(columns), default)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    column = columns[field]
    ordered = query.order_by(
        (column.desc() if descending else column.asc()).nulls_last(),
        key.desc() if descending else key.asc(),
    )
    result = session.execute(ordered.limit(page.limit).offset(page.offset))
    rows = list(result.scalars() if len(query.column_descriptions) == 1 else result.all())
    return rows, int(total or 0)


def paginate_list(
    items: Sequence[T],
    page: PageParams,
    sort: str | None,
    keys: Mapping[str, Callable[[T], Any]],
    default: str,
) -> tuple[list[T], int]:
    """The same for a list already in memory (the policy pack)."""
    field, descending = parse_sort(sort, list(keys), default)
    key = keys[field]
    present = [i for i in items if key(i) is not None]
    ordered = sorted(present, key=key, reverse=descending)  # stable: input order breaks ties
    ordered += [i for i in items if key(i) is None]
    return ordered[page.offset : page.offset + page.limit], len(items)
