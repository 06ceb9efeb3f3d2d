"""Lists: pages by cursor (keyset) or by offset, a capped total, sorting by a named field.

Every ordering ends with the primary key, so that pages neither repeat nor skip rows.
Empty values (an unpriced saving) sort last both ways, on every database: PostgreSQL and
SQLite disagree about where NULL goes by default.

Paging: each page of a SQL list carries `next_cursor` (null on the last page); sending it
back as `cursor` gives the next page, by a keyset query (keyset.py) whose cost does not
grow with the depth, and stays right while rows are added. `offset` still works (its cost
grows with the offset); both together are refused. The total counts at most `count_cap`
rows (FINOPS_API_COUNT_CAP): past it, `total_exact` is false and `total` a lower bound. The
cursor carries the first page's total to the pages after it, which are not counted again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from backend.api.cursors import MAX_CURSOR, decode_cursor, encode_cursor, invalid_cursor
from backend.api.deps import ContextDep
from backend.api.keyset import Column, SortKey, count_upto, fetch_after, fetch_offset
from backend.api.keyset import Query as SqlQuery
from backend.api.problems import Problem

T = TypeVar("T")
MAX_LIMIT = 500
MAX_OFFSET = 2**63 - 1  # OFFSET is a signed 64-bit integer in PostgreSQL and SQLite
DEFAULT_COUNT_CAP = 10_000


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(
        description="Matching items; a lower bound when total_exact is false (the count "
        "stops past FINOPS_API_COUNT_CAP rows, 10,000 by default). Pages asked by cursor "
        "repeat the total the list's first page counted."
    )
    total_exact: bool = Field(description="False when the count stopped at the cap.")
    limit: int
    offset: int | None = Field(description="Items skipped; null on a page asked by cursor.")
    next_cursor: str | None = Field(
        description="Send it as `cursor` (same filters and sort) for the next page; null on "
        "the last page."
    )


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int
    cursor: str | None = None
    count_cap: int = DEFAULT_COUNT_CAP


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]


async def page_params(  # async: no I/O, so no thread pool hop (see deps.py)
    context: ContextDep,
    limit: Limit = 50,
    offset: Annotated[
        int | None,
        Query(ge=0, le=MAX_OFFSET, description="Items to skip (0 when absent); not with cursor."),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR, description="The previous page's next_cursor."),
    ] = None,
) -> PageParams:
    if cursor is not None and offset is not None:
        raise invalid_cursor("send cursor or offset, not both: the cursor says where to start")
    return PageParams(limit, offset or 0, cursor, context.settings.api_count_cap)


async def offset_params(
    limit: Limit = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit, offset)


Paging = Annotated[PageParams, Depends(page_params)]
OffsetPaging = Annotated[PageParams, Depends(offset_params)]  # lists held in memory
SortParam = Annotated[
    str | None, Query(pattern=r"^-?[a-z_]+$", description="A field; '-field' sorts descending.")
]


@dataclass(frozen=True)
class Window:
    """One page's rows and what the page says about the rest of the list."""

    rows: list[Any]
    total: int
    total_exact: bool
    limit: int
    offset: int | None
    next_cursor: str | None

    def meta(self) -> dict[str, Any]:
        """The Page fields other than the items."""
        return {
            "total": self.total,
            "total_exact": self.total_exact,
            "limit": self.limit,
            "offset": self.offset,
            "next_cursor": self.next_cursor,
        }

    def page(self, items: list[T]) -> Page[T]:
        return Page(items=items, **self.meta())


def json_answer(page: BaseModel, headers: Mapping[str, str] | None = None) -> Response:
    """The page as JSON, already checked by its model: returning the model instead makes
    FastAPI dump it to a dict, validate that against the response model and dump it
    again, a third of an uncached list page's CPU. Routes keep `response_model` for the
    OpenAPI schema."""
    return Response(page.model_dump_json(), media_type="application/json", headers=headers)


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
    query: SqlQuery,
    page: PageParams,
    sort: str | None,
    columns: Mapping[str, Column],
    key: Column,
    default: str = "-id",
    *,
    count_query: SqlQuery | None = None,
    total: int | None = None,
) -> Window:
    """One page of `query` (scalars when it selects one entity, else tuples).

    `count_query` counts the same rows more cheaply (without a join that filters nothing);
    `total`, when the caller knows it exactly already, skips the count.
    """
    field, descending = parse_sort(sort, list(columns), default)
    order = SortKey(columns[field], key, descending)
    sort_text = f"-{field}" if descending else field
    carried: tuple[int, bool] | None = None
    if page.cursor is not None:
        ints = order.ints(session.get_bind().dialect.name)
        after = decode_cursor(page.cursor, sort_text, order.kind, order.nullable, ints)
        carried = after.counted
        found = fetch_after(session, query, order, after, page.limit + 1)
    elif page.offset == 0:
        found = fetch_after(session, query, order, None, page.limit + 1)
    else:
        found = fetch_offset(session, query, order, page.offset, page.limit + 1)
    more = len(found) > page.limit
    found = found[: page.limit]
    offset = None if page.cursor is not None else page.offset
    exact = True
    if total is None and carried is not None:
        total, exact = carried  # as the first page counted it: not counted on every page
    if total is None and offset is not None and not more and (found or offset == 0):
        total = offset + len(found)  # the page reached the end: no count needed
    if total is None:
        counted = count_upto(
            session, query if count_query is None else count_query, key, page.count_cap
        )
        exact = counted <= page.count_cap
        seen = (offset or 0) + len(found) + more  # rows this page shows exist
        total = counted if exact else max(page.count_cap, seen)
    next_cursor = encode_cursor(sort_text, *_last(found), (total, exact)) if more else None
    rows = [f.item for f in found]
    return Window(rows, total, exact, page.limit, offset, next_cursor)


def _last(found: list[Any]) -> tuple[Any, int]:
    position = found[-1].position
    return position.value, position.key


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


def list_page(items: list[T], total: int, page: PageParams) -> Page[T]:
    """The Page of items from paginate_list: its total exact, paged by offset only."""
    return Window(items, total, True, page.limit, page.offset, None).page(items)
