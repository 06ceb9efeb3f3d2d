"""Sorting and paging rules shared by every list."""

from __future__ import annotations

import pytest

from backend.api.pagination import PageParams, paginate_list, parse_sort
from backend.api.problems import Problem


def test_parse_sort_reads_direction_and_refuses_unknown_fields() -> None:
    assert parse_sort(None, ["id", "name"], "-id") == ("id", True)
    assert parse_sort("name", ["id", "name"], "-id") == ("name", False)
    with pytest.raises(Problem) as refused:
        parse_sort("-secret", ["id", "name"], "-id")
    assert refused.value.status == 422 and "id, name" in refused.value.detail


def test_paginate_list_sorts_both_ways_with_empty_values_last() -> None:
    items = [{"n": 3}, {"n": None}, {"n": 1}, {"n": 2}]
    keys = {"n": lambda i: i["n"]}
    page = PageParams(limit=2, offset=0)
    assert paginate_list(items, page, "n", keys, "n") == ([{"n": 1}, {"n": 2}], 4)
    assert paginate_list(items, PageParams(2, 2), "n", keys, "n") == ([{"n": 3}, {"n": None}], 4)
    assert paginate_list(items, page, "-n", keys, "n")[0] == [{"n": 3}, {"n": 2}]
    assert paginate_list(items, PageParams(10, 3), "-n", keys, "n")[0] == [{"n": None}]
