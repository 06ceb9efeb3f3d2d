"""The SQL compiler's leaf hook: what the caller returns stands in for each leaf."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, column
from sqlalchemy.dialects import postgresql

from backend.core.sql_policies import SqlCompiler, leaves
from backend.domain.policy import load_text
from backend.domain.policy.filters import Filter

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def policy_filters(filters: str) -> Filter:
    pack = load_text(
        f"policies:\n  - name: p\n    resource: ec2\n    filters: {filters}\n    action: stop\n",
        "p.yml",
    )
    return pack.policies[0].filters


def test_each_leaf_is_replaced_by_what_on_leaf_returns() -> None:
    tree = policy_filters('[{"tag:team": dev}, {not: [{"State.Name": running}]}]')
    seen: list[tuple[Filter, Any]] = []

    def stand_in(node: Filter, predicate: Any) -> Any:
        seen.append((node, predicate))
        return column(f"leaf{len(seen)}", Boolean)

    compiled = SqlCompiler("postgresql", NOW, on_leaf=stand_in).compile(tree)
    assert compiled is not None
    assert [node for node, _ in seen] == list(leaves(tree))
    assert str(compiled.compile(dialect=postgresql.dialect())) == "leaf1 AND NOT leaf2"
    # what the caller is handed is the leaf's own predicate, to compute elsewhere
    first = str(seen[0][1].compile(dialect=postgresql.dialect()))
    assert "resources.tags ->> " in first  # tag:team is read from the JSON
    second = str(seen[1][1].compile(dialect=postgresql.dialect()))
    assert "resources.state_name = " in second  # State.Name from the column kept (0012)


def test_a_tree_with_a_leaf_sql_cannot_express_still_compiles_to_nothing() -> None:
    tree = policy_filters(
        '[{"tag:env": dev}, {type: value, key: "tag:team", value: A, case: insensitive}]'
    )
    compiler = SqlCompiler("postgresql", NOW, on_leaf=lambda node, predicate: predicate)
    assert compiler.compile(tree) is None
