"""Keyset pages through the HTTP API on SQLite and PostgreSQL: walking `next_cursor` gives
every matching row exactly once, in the order offset paging gives, for every sort direction
and with empty values; bad cursors are problem documents; the total stops at the cap."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backend.core.types import utcnow
from tests.support.api_client import (
    Api,
    build_api,
    is_problem,
    seed_action,
    seed_opportunity,
    seed_resource,
)

V1 = "/api/v1"
MAX_PAGES = 100  # a walk that goes round in circles fails instead of running forever
COSTS = [5.0, None, 20.0, 5.0, None, 1.0, 20.0, None, 7.5, 5.0, 0.0]


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


@pytest.fixture
def fleet(api: Api) -> dict[int, dict[str, Any]]:
    """Resources with ties and empty costs, two kinds, one gone: pk -> what was seeded."""
    start = utcnow() - dt.timedelta(days=30)
    seeded: dict[int, dict[str, Any]] = {}
    for i, cost in enumerate(COSTS):
        values = {
            "monthly_cost": cost,
            "kind": "ec2" if i % 3 else "ebs",
            "resource_id": f"r-{(i * 7) % 11:02d}",
            "last_seen": start + dt.timedelta(hours=i % 4),  # ties on a datetime too
        }
        seeded[seed_resource(**values)] = values
    seed_resource(monthly_cost=3.0, gone_at=utcnow())  # never listed by default
    return seeded


def walk(api: Api, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item, following next_cursor from the first page to the last."""
    page = api.get(path, params={**params, "limit": limit}).json()
    assert page["offset"] == 0, page
    items = list(page["items"])
    for _ in range(MAX_PAGES):
        if page["next_cursor"] is None:
            return items
        assert len(page["items"]) == limit  # only a full page has a next one
        page = api.get(path, params={**params, "limit": limit, "cursor": page["next_cursor"]})
        page = page.json()
        assert page["offset"] is None and len(page["items"]) <= limit, page
        items += page["items"]
    raise AssertionError(f"no last page after {MAX_PAGES} pages")


def by_offset(api: Api, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = api.get(path, params={**params, "limit": limit, "offset": len(items)}).json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
    raise AssertionError(f"no last page after {MAX_PAGES} pages")


def expected(rows: dict[int, Any], value: Callable[[Any], Any], descending: bool) -> list[int]:
    """The API's order: by the value then the id, in one direction; empty values last."""
    present = sorted((value(v), pk) for pk, v in rows.items() if value(v) is not None)
    empty = sorted(pk for pk, v in rows.items() if value(v) is None)
    if descending:
        present.reverse()
        empty.reverse()
    return [pk for _, pk in present] + empty


@pytest.mark.parametrize("limit", [1, 2, 4, 50])
@pytest.mark.parametrize("sort", ["monthly_cost", "-monthly_cost"])
def test_a_cursor_walk_gives_every_row_once_in_order_with_empty_values_last(
    api: Api, fleet: dict[int, dict[str, Any]], sort: str, limit: int
) -> None:
    walked = [r["id"] for r in walk(api, f"{V1}/inventory", limit, sort=sort)]
    want = expected(fleet, lambda v: v["monthly_cost"], sort.startswith("-"))
    assert walked == want
    assert [r["id"] for r in by_offset(api, f"{V1}/inventory", limit, sort=sort)] == want


@pytest.mark.parametrize(
    "sort", ["id", "-id", "resource_id", "-resource_id", "last_seen", "-last_seen", "-kind"]
)
def test_a_cursor_walk_works_for_every_kind_of_sort_field(
    api: Api, fleet: dict[int, dict[str, Any]], sort: str
) -> None:
    field = sort.lstrip("-")
    values: dict[int, Any] = {pk: {**v, "id": pk} for pk, v in fleet.items()}
    want = expected(values, lambda v: v[field], sort.startswith("-"))
    assert [r["id"] for r in walk(api, f"{V1}/inventory", 3, sort=sort)] == want


def test_a_cursor_walk_keeps_its_filters(api: Api, fleet: dict[int, dict[str, Any]]) -> None:
    ec2 = {pk: v for pk, v in fleet.items() if v["kind"] == "ec2"}
    walked = walk(api, f"{V1}/inventory", 2, sort="-monthly_cost", kind="ec2")
    assert [r["id"] for r in walked] == expected(ec2, lambda v: v["monthly_cost"], True)
    priced = walk(api, f"{V1}/inventory", 2, sort="monthly_cost", min_monthly_cost=5)
    assert [r["monthly_cost"] for r in priced] == [5.0, 5.0, 5.0, 7.5, 20.0, 20.0]
    everything = walk(api, f"{V1}/inventory", 5, sort="monthly_cost", include_gone=True)
    assert len(everything) == len(fleet) + 1


def test_a_walk_neither_repeats_nor_skips_when_rows_are_added_behind_it(api: Api) -> None:
    first = [seed_resource(monthly_cost=float(i)) for i in range(6)]
    page = api.get(f"{V1}/inventory", params={"sort": "id", "limit": 3}).json()
    late = seed_resource(monthly_cost=99.0)  # after the walk's position: it is listed
    rest = walk_from(api, page["next_cursor"], sort="id", limit=3)
    assert [r["id"] for r in page["items"] + rest] == [*first, late]


def walk_from(api: Api, cursor: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_cursor: str | None = cursor
    for _ in range(MAX_PAGES):
        if next_cursor is None:
            return items
        page = api.get(f"{V1}/inventory", params={**params, "cursor": next_cursor}).json()
        items += page["items"]
        next_cursor = page["next_cursor"]
    raise AssertionError(f"no last page after {MAX_PAGES} pages")


def test_opportunities_and_actions_walk_by_cursor_too(api: Api) -> None:
    savings = [3.0, None, 12.0, 3.0, None, 8.0]
    opportunities = {
        seed_opportunity(
            seed_resource(kind="ebs" if i % 2 else "ec2"), estimated_monthly_savings=s
        ): {"s": s, "kind": "ebs" if i % 2 else "ec2"}
        for i, s in enumerate(savings)
    }
    path = f"{V1}/opportunities"
    walked = walk(api, path, 2, sort="-estimated_monthly_savings")
    assert [o["id"] for o in walked] == expected(opportunities, lambda v: v["s"], True)
    ebs = {pk: v for pk, v in opportunities.items() if v["kind"] == "ebs"}
    walked = walk(api, path, 1, sort="estimated_monthly_savings", kind="ebs")
    assert [o["id"] for o in walked] == expected(ebs, lambda v: v["s"], False)
    actions = {seed_action(estimated_monthly_savings=s): s for s in savings}
    walked = walk(api, f"{V1}/actions", 4, sort="-estimated_monthly_savings")
    assert [a["id"] for a in walked] == expected(actions, lambda v: v, True)
    assert [a["id"] for a in walk(api, f"{V1}/actions", 4)] == sorted(actions, reverse=True)


def cursor_of(body: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def test_a_malformed_or_tampered_cursor_is_a_problem_that_says_what_is_wrong(
    api: Api, any_database: str
) -> None:
    seed_resource()
    good = api.get(f"{V1}/inventory", params={"limit": 1, "sort": "monthly_cost"}).json()
    assert good["next_cursor"] is None  # one row: the last page already
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cursor": "!!!"}, "base64"),
        ({"cursor": "bm90IGpzb24"}, "base64"),  # "not json"
        ({"cursor": cursor_of({"a": 1})}, "[sort, value, id, total, exact]"),
        ({"cursor": cursor_of(["monthly_cost", 1.0, 1, 4])}, "[sort, value, id, total, exact]"),
        ({"cursor": cursor_of(["-id", 1, 1]), "sort": "id"}, "'-id', not 'id'"),
        ({"cursor": cursor_of(["monthly_cost", "x", 1]), "sort": "monthly_cost"}, "number"),
        ({"cursor": cursor_of(["monthly_cost", True, 1]), "sort": "monthly_cost"}, "number"),
        ({"cursor": cursor_of(["monthly_cost", 1.0, "1"]), "sort": "monthly_cost"}, "id"),
        ({"cursor": cursor_of(["monthly_cost", 1.0, 2**63]), "sort": "monthly_cost"}, "range"),
        ({"cursor": cursor_of(["kind", None, 1]), "sort": "kind"}, "never empty"),
        ({"cursor": cursor_of(["kind", 5, 1]), "sort": "kind"}, "text"),
        ({"cursor": cursor_of(["kind", "a\x00b", 1]), "sort": "kind"}, "text"),
        ({"cursor": cursor_of(["-id", 2**64, 1])}, "range"),
        (
            {"cursor": cursor_of(["last_seen", "2026-01-01T00:00:00", 1]), "sort": "last_seen"},
            "offset",
        ),
        ({"cursor": cursor_of(["last_seen", "yesterday", 1]), "sort": "last_seen"}, "ISO 8601"),
        ({"cursor": cursor_of(["-id", 5, 1]), "offset": 0}, "not both"),
        ({"cursor": ""}, "characters"),
    ]
    for params, says in cases:
        problem = is_problem(api.get(f"{V1}/inventory", params=params), 422, "invalid-cursor")
        assert says in problem["detail"], (params, problem)
    too_long = api.get(f"{V1}/inventory", params={"cursor": "a" * 513})
    is_problem(too_long, 422, "request-validation")
    for path in ("/opportunities", "/actions", "/runs", "/audit/events", "/overrides"):
        is_problem(api.get(V1 + path, params={"cursor": "%%%"}), 422, "invalid-cursor")
    # Action ids are PostgreSQL integers (32-bit): a bigger one is refused before the query.
    past = api.get(f"{V1}/actions", params={"cursor": cursor_of(["-id", 2**40, 2**40])})
    if any_database.startswith("postgresql"):
        assert "range" in is_problem(past, 422, "invalid-cursor")["detail"]
    else:
        assert past.status_code == 200  # SQLite's integers are all 64-bit
    # The policy pack is a list in memory: it pages by offset, and takes no cursor.
    assert api.get(f"{V1}/policies", params={"cursor": "x"}).json()["next_cursor"] is None


@pytest.fixture
def capped(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("FINOPS_API_COUNT_CAP", "3")
    return build_api(tmp_path, monkeypatch)


def test_the_total_is_exact_up_to_the_cap_then_a_lower_bound(capped: Api) -> None:
    def page(**params: Any) -> dict[str, Any]:
        body: dict[str, Any] = capped.get(f"{V1}/actions", params=params).json()
        return body

    ids = [seed_action() for _ in range(3)]
    at_cap = page(limit=1)
    assert (at_cap["total"], at_cap["total_exact"]) == (3, True)
    ids.append(seed_action())
    past = page(limit=1)
    assert (past["total"], past["total_exact"]) == (3, False)  # counted up to the cap only
    on_cursor = page(limit=1, cursor=past["next_cursor"])
    assert (on_cursor["total"], on_cursor["total_exact"]) == (3, False)
    # A page that reaches the end knows the total without counting, past the cap too.
    whole = page(limit=10)
    assert (whole["total"], whole["total_exact"], len(whole["items"])) == (4, True, 4)
    assert page(limit=2, offset=2)["total"] == 4
    ids += [seed_action() for _ in range(3)]
    deep = page(limit=2, offset=4)  # past the cap, the bound covers what the page shows
    assert (deep["total"], deep["total_exact"]) == (7, False)
    assert [a["id"] for a in deep["items"]] == sorted(ids, reverse=True)[4:6]
    # The opportunities' totals, when asked for, are exact whatever the cap.
    for _ in range(5):
        seed_opportunity(seed_resource())
    summed = capped.get(f"{V1}/opportunities", params={"limit": 1, "include_totals": True})
    assert (summed.json()["total"], summed.json()["total_exact"]) == (5, True)
    plain = capped.get(f"{V1}/opportunities", params={"limit": 1}).json()
    assert (plain["total"], plain["total_exact"]) == (3, False)


def test_pages_asked_by_cursor_repeat_the_first_pages_total(capped: Api) -> None:
    for _ in range(2):
        seed_action()
    first = capped.get(f"{V1}/actions", params={"limit": 1}).json()
    assert (first["total"], first["total_exact"]) == (2, True)
    for _ in range(3):
        seed_action()  # five now, past the cap of three: a count would say (3, False)
    second = capped.get(f"{V1}/actions", params={"limit": 1, "cursor": first["next_cursor"]})
    assert (second.json()["total"], second.json()["total_exact"]) == (2, True)
    assert capped.get(f"{V1}/actions", params={"limit": 1}).json()["total_exact"] is False
