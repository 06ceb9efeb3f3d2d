"""A worker paused past its action's deadline (SIGSTOP, a frozen VM) wakes up after the
reconciler has settled the action: it must not go on with the change, nor write the record.

The pause is made inside the stop operation's backup step, between the claim and the change,
on PostgreSQL and on the embedded SQLite; the reconciler there is the workers' own.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from backend.config import get_settings
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.core.types import utcnow
from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import OPERATIONS
from backend.runtime.reconcile import reconcile, stuck_actions
from backend.runtime.services import WorkerServices
from tests.integration.execution_fleet import live_fleet
from tests.integration.execution_support import engine

pytestmark = [pytest.mark.moto_server]


def test_a_worker_paused_past_its_deadline_does_not_go_on_after_the_handoff(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = live_fleet(moto_url, monkeypatch, tmp_path, 1)
    with session_scope() as session:
        (row,) = session.query(ActionRow).filter_by(resource_id=fleet.idle, state="approved")
        action_id = row.id
    op = OPERATIONS[("stop", ResourceKind.EC2_INSTANCE)]
    backup = op.backup
    settled: list[str] = []

    def paused_past_the_deadline(*args: Any) -> Any:
        taken = backup(*args)
        # Meanwhile: the deadline passes with no heartbeat of this worker, and the
        # reconciler settles the action (the pre-state is recorded, no change is found).
        with session_scope() as session:
            session.execute(
                update(ActionRow)
                .where(ActionRow.id == action_id)
                .values(deadline=utcnow() - dt.timedelta(minutes=1))
            )
        services = WorkerServices(get_settings())
        assert stuck_actions(services, utcnow()) == [action_id]
        settled.append(reconcile(services, action_id))
        return taken

    monkeypatch.setattr(op, "backup", paused_past_the_deadline)
    outcome = engine().execute_one(action_id, None, dry_run=False)

    assert settled == ["failed"]
    assert outcome.result == "claim-lost", outcome
    assert "it is failed" in outcome.detail
    assert fleet.instance_state(fleet.idle) == "running"  # the stop was never sent
    with session_scope() as session:
        after = session.get(ActionRow, action_id)
        assert after is not None
        assert after.state == "failed" and after.post_state is None  # the reconciler's record
        assert (after.error or "").startswith("worker ")
    events = [e for e in AuditLogger().events("1h") if e.subject_id == str(action_id)]
    assert events[-1].outcome == "claim lost"
    assert not [e for e in events if e.outcome == "change made"]
    assert AuditLogger().verify().ok
