"""An opportunity always names a resource (migration 0004's triggers, which replaced a
row-by-row foreign key): on SQLite and PostgreSQL alike."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import OpportunityRow, ResourceRow
from backend.core.opportunity_keys import opportunity_id, policy_numbers
from tests.support.api_client import seed_resource

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)


def opportunity(resource_pk: int, policy: str = "p") -> dict[str, object]:
    return {
        "id": opportunity_id(resource_pk, {"p": 1, "q": 2}[policy]),
        "policy_name": policy,
        "resource_pk": resource_pk,
        "action": "delete",
        "params": {},
        "evidence": {},
        "status": "open",
        "first_found": NOW,
        "last_seen": NOW,
    }


def migrate() -> None:
    """The schema at head, and the policies "p" and "q" numbered 1 and 2."""
    upgrade()
    with session_scope() as session:
        assert policy_numbers(session.connection(), ["p", "q"]) == {"p": 1, "q": 2}


def count_opportunities() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(OpportunityRow)) or 0)


def test_an_opportunity_for_no_resource_is_refused_whole(any_database: str) -> None:
    migrate()
    pk = seed_resource()
    refusal = r"FOREIGN KEY|do not exist"
    with pytest.raises(DBAPIError, match=refusal) as refused, session_scope() as session:
        session.execute(insert(OpportunityRow), [opportunity(pk), opportunity(pk + 999)])
    assert "opportunities" in str(refused.value)
    assert count_opportunities() == 0  # the valid row went with the invalid one

    with session_scope() as session:
        session.execute(insert(OpportunityRow), [opportunity(pk), opportunity(pk, "q")])
    assert count_opportunities() == 2


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("where", ["first", "between", "last"])
def test_a_missing_resource_among_many_is_found_wherever_it_falls(
    any_database: str, where: str, layout: str
) -> None:
    """PostgreSQL merges the new rows with the resources between the smallest and largest
    resource_pk they name where they are dense in that range, and looks each up where they
    are sparse (0013): either way a missing one at either end or in a gap is refused."""
    migrate()
    if layout == "dense":
        pks = [seed_resource() for _ in range(5)]
    else:  # 10 rows across ids 100,000 apart: 6 rows an id is far away
        pks = [seed_resource(id=1_000 + 100_000 * i) for i in range(5)]
    gone = {"first": pks[0], "between": pks[2], "last": pks[-1]}[where]
    with session_scope() as session:
        session.execute(delete(ResourceRow).where(ResourceRow.id == gone))
    rows = [opportunity(pk, policy) for pk in pks for policy in ("p", "q")]
    named = "FOREIGN KEY" if any_database.startswith("sqlite") else rf"\(resource_pk {gone},"
    # One statement: executemany would run one per row.
    with pytest.raises(DBAPIError, match=named), session_scope() as session:
        session.execute(insert(OpportunityRow).values(rows))
    assert count_opportunities() == 0
    kept = [row for row in rows if row["resource_pk"] != gone]
    with session_scope() as session:  # and the others, all of them there, go in
        session.execute(insert(OpportunityRow).values(kept))
    assert count_opportunities() == len(kept) == 8


def test_deleting_resources_deletes_their_opportunities_only(any_database: str) -> None:
    migrate()
    gone, kept = seed_resource(), seed_resource()
    with session_scope() as session:
        session.execute(
            insert(OpportunityRow), [opportunity(gone), opportunity(gone, "q"), opportunity(kept)]
        )
    with session_scope() as session:
        session.execute(delete(ResourceRow).where(ResourceRow.id == gone))
    with session_scope() as session:
        left = session.scalars(select(OpportunityRow.resource_pk)).all()
    assert left == [kept]


def test_the_keys_between_them_never_change(any_database: str) -> None:
    migrate()
    first, second = seed_resource(), seed_resource()
    with session_scope() as session:
        session.execute(insert(OpportunityRow), [opportunity(first)])
    # the id's check or the trigger, whichever the database runs first
    refused = "resource_pk never changes|id_is_key"
    with pytest.raises(DBAPIError, match=refused), session_scope() as s:
        s.execute(update(OpportunityRow).values(resource_pk=second))
    with pytest.raises(DBAPIError, match="id never changes"), session_scope() as s:
        s.execute(update(ResourceRow).where(ResourceRow.id == first).values(id=second + 100))
    with session_scope() as session:  # any other change goes through
        session.execute(update(OpportunityRow).values(status="resolved"))
        session.execute(update(ResourceRow).values(state="in-use"))
    with session_scope() as session:
        assert session.scalar(select(OpportunityRow.resource_pk)) == first


def test_truncating_resources_truncates_opportunities(postgres_url: str) -> None:
    migrate()
    pk = seed_resource()
    with session_scope() as session:
        session.execute(insert(OpportunityRow), [opportunity(pk)])
    with session_scope() as session:
        session.execute(text("TRUNCATE resources CASCADE"))
    assert count_opportunities() == 0


def test_an_id_must_hold_its_own_resource_and_policy(any_database: str) -> None:
    """With the id as the key, one opportunity per (policy, resource) holds only if each id
    is its own row's: the database refuses any other, on insert and on update."""
    migrate()
    pk = seed_resource()
    refused = r"policy_number|holds its policy|id_is_key|CHECK constraint"
    wrong_number = opportunity(pk) | {"id": opportunity_id(pk, 2)}  # q's number, for p
    with pytest.raises(DBAPIError, match=refused), session_scope() as session:
        session.execute(insert(OpportunityRow), [wrong_number])
    unknown_name = opportunity(pk) | {"policy_name": "never-numbered"}
    with pytest.raises(DBAPIError, match=refused), session_scope() as session:
        session.execute(insert(OpportunityRow), [unknown_name])
    with session_scope() as session:
        session.execute(insert(OpportunityRow), [opportunity(pk)])
    with pytest.raises(DBAPIError, match="never change"), session_scope() as session:
        session.execute(update(OpportunityRow).values(policy_name="q"))
    far = seed_resource(id=2**40)  # past what an id can hold below 2^53
    with pytest.raises(DBAPIError, match=r"id_is_key|CHECK constraint"), session_scope() as s:
        s.execute(
            insert(OpportunityRow),
            [opportunity(pk) | {"resource_pk": far, "id": far * 8192 + 1}],
        )
    assert count_opportunities() == 1
