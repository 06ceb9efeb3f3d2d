"""A rescan updates the resources and metric summaries it knows in place and spends no new
ids on them (PostgreSQL draws one for every row an INSERT ... ON CONFLICT attempts)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import ORMExecuteState

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import MetricSummaryRow, ResourceRow, ScanRunRow
from backend.core.repositories import MetricRepository, ResourceRepository
from backend.domain.resources import MetricSpec, Resource, ResourceKind

AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def volume(name: str, state: str = "available") -> Resource:
    return Resource(
        kind=ResourceKind.EBS_VOLUME,
        resource_id=name,
        account_id="123456789012",
        region="us-east-1",
        state=state,
        tags={"env": "dev"},
        attributes={"Size": 8, "State": state},
    )


def scan_in(resources: list[Resource], at: dt.datetime) -> None:
    with session_scope() as session:
        run = ScanRunRow(started_at=at)
        session.add(run)
        session.flush()
        ResourceRepository(session).upsert_many(
            resources, scan_id=run.id, seen_at=at, cost=lambda r: (1.0, None)
        )


def by_name() -> dict[str, ResourceRow]:
    with session_scope() as session:
        rows = session.scalars(select(ResourceRow)).all()
        session.expunge_all()
        return {row.resource_id: row for row in rows}


def test_a_rescan_updates_known_resources_and_draws_ids_only_for_new_ones(
    any_database: str,
) -> None:
    upgrade()
    scan_in([volume("vol-a"), volume("vol-b")], AT)
    first = by_name()
    for hour in range(1, 4):  # three rescans: vol-b attached, the rest unchanged
        scan_in([volume("vol-a"), volume("vol-b", "in-use")], AT + dt.timedelta(hours=hour))
    later = AT + dt.timedelta(hours=4)
    scan_in([volume("vol-a"), volume("vol-b", "in-use"), volume("vol-c")], later)
    now = by_name()
    assert {name: row.id for name, row in now.items() if name != "vol-c"} == {
        name: row.id for name, row in first.items()
    }
    # The new volume's id follows the last one drawn: the rescans spent none.
    assert now["vol-c"].id == max(row.id for row in first.values()) + 1
    assert now["vol-b"].state == "in-use" and now["vol-b"].attributes["State"] == "in-use"
    assert now["vol-b"].first_seen == first["vol-b"].first_seen
    assert now["vol-a"].last_seen.replace(tzinfo=dt.UTC) == later
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ResourceRow)) == 3


def test_a_resource_deleted_between_lookup_and_update_is_written_again(
    any_database: str,
) -> None:
    upgrade()
    scan_in([volume("vol-a"), volume("vol-b")], AT)
    with session_scope() as session:
        run = ScanRunRow(started_at=AT)
        session.add(run)
        session.flush()

        def purge_first(state: ORMExecuteState) -> None:  # a retention purge, say
            if state.is_update and not state.session.info.get("purged"):
                state.session.info["purged"] = True
                state.session.execute(delete(ResourceRow).where(ResourceRow.resource_id == "vol-a"))

        event.listen(session, "do_orm_execute", purge_first)
        ResourceRepository(session).upsert_many(
            [volume("vol-a", "in-use"), volume("vol-b", "in-use")],
            scan_id=run.id,
            seen_at=AT,
            cost=lambda r: (1.0, None),
        )
        assert session.info.get("purged")
    now = by_name()
    assert {name: row.state for name, row in now.items()} == {"vol-a": "in-use", "vol-b": "in-use"}


def test_rescanned_metric_summaries_are_updated_and_draw_no_ids(any_database: str) -> None:
    upgrade()
    scan_in([volume("vol-a"), volume("vol-b")], AT)
    pks = [row.id for row in by_name().values()]
    reads = MetricSpec("AWS/EBS", "VolumeReadOps", "Sum", 14)
    idle = MetricSpec("AWS/EBS", "VolumeIdleTime", "Sum", 14)

    def collect(values: list[tuple[int, MetricSpec, float | None]], at: dt.datetime) -> None:
        with session_scope() as session:
            MetricRepository(session).upsert_many(values, at=at)

    collect([(pk, reads, 10.0) for pk in pks], AT)
    for hour in range(1, 4):
        collect([(pk, reads, 10.0 + hour) for pk in pks], AT + dt.timedelta(hours=hour))
    collect([(pks[0], reads, 20.0), (pks[0], idle, None)], AT + dt.timedelta(hours=4))
    with session_scope() as session:
        rows = session.execute(
            select(MetricSummaryRow.id, MetricSummaryRow.resource_pk, MetricSummaryRow.metric)
            .add_columns(MetricSummaryRow.value)
            .order_by(MetricSummaryRow.id)
        ).all()
    ids = [row.id for row in rows]
    assert ids == list(range(ids[0], ids[0] + 3))  # the new series took the next id
    assert {(row.resource_pk, row.metric, row.value) for row in rows[:2]} == {
        (pks[0], "VolumeReadOps", 20.0),
        (pks[1], "VolumeReadOps", 13.0),
    }
    assert (rows[2].resource_pk, rows[2].metric, rows[2].value) == (pks[0], "VolumeIdleTime", None)
