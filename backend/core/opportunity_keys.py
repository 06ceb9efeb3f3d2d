"""An opportunity's id is its key: the resource and the policy packed into one integer.

With a sequence id and a unique (policy, resource), each opportunity written updated two
B-trees. A first evaluation of 1,000,000 stored resources writes 487,417 opportunities, and
the second B-tree cost 1.5 - 1.8 s of it (docs/benchmarks.md). The id is now resource_pk *
8192 + the policy's number, so that the primary key alone keeps (policy, resource) unique.
Each policy name evaluated gets its number once, in `policy_numbers`, and keeps it: an id
never changes meaning. The database refuses an id whose parts are not its row's (migration
0011). With resource_pk below 2^40 the ids stay below 2^53, exact in JavaScript's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.engine import Connection

from backend.core.models import PolicyNumberRow

POLICY_SLOTS = 8192  # numbers 1 - 8191; 0 is never a policy's
MAX_RESOURCE_PK = 2**40 - 1


class PolicyNumbersExhaustedError(RuntimeError):
    """Every number an opportunity's id can hold is taken by a policy name."""


def opportunity_id(resource_pk: int, number: int) -> int:
    if not 0 < resource_pk <= MAX_RESOURCE_PK:
        raise ValueError(f"resource_pk {resource_pk} is outside 1 - 2^40: no opportunity id")
    if not 0 < number < POLICY_SLOTS:
        raise ValueError(f"policy number {number} is outside 1 - {POLICY_SLOTS - 1}")
    return resource_pk * POLICY_SLOTS + number


def id_expression(resource_pk: Any, number: Any) -> ColumnElement[int]:
    """The same id, computed in SQL (PostgreSQL and SQLite alike)."""
    return resource_pk * POLICY_SLOTS + number  # type: ignore[no-any-return]


def policy_numbers(connection: Connection, names: Iterable[str]) -> dict[str, int]:
    """Each name's number, giving the next free ones to names that have none yet."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    known = _known(connection, wanted)
    if len(known) == len(wanted):
        return known
    if connection.dialect.name == "postgresql":
        # Two writers must not hand out the same number: one at a time, until commit; and
        # the opportunities first, as every writer of them locks (no deadlock).
        connection.exec_driver_sql("LOCK TABLE opportunities IN SHARE ROW EXCLUSIVE MODE")
        connection.exec_driver_sql("LOCK TABLE policy_numbers IN SHARE ROW EXCLUSIVE MODE")
        known = _known(connection, wanted)
    missing = [name for name in wanted if name not in known]
    top = connection.scalar(select(func.coalesce(func.max(PolicyNumberRow.number), 0))) or 0
    if top + len(missing) >= POLICY_SLOTS:
        raise PolicyNumbersExhaustedError(
            f"{len(missing)} new policy name(s) need numbers for their opportunities' ids, "
            f"but {top} of the {POLICY_SLOTS - 1} an id can hold are taken by names used "
            f"before: reuse one of those names ({', '.join(missing[:3])} are new)"
        )
    given = {name: top + i for i, name in enumerate(missing, 1)}
    connection.execute(
        insert(PolicyNumberRow),
        [{"number": number, "policy_name": name} for name, number in given.items()],
    )
    return known | given


def _known(connection: Connection, names: list[str]) -> dict[str, int]:
    rows = connection.execute(
        select(PolicyNumberRow.policy_name, PolicyNumberRow.number).where(
            PolicyNumberRow.policy_name.in_(names)
        )
    )
    return {name: int(number) for name, number in rows}
