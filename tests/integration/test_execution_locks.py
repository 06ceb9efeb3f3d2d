"""No transaction holds the audit chain's lock while it waits on AWS: one slow answer would
hold every audited write behind it, the emergency stop's included (in-process moto)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from backend.core.action_planner import ActionPlanner
from backend.core.audit_chain import EventType
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from tests.integration import test_undo_faults as undo
from tests.support.botocore_faults import Faults

WAIT_SECONDS = 10.0


def audited_write_from_another_connection() -> bool:
    """Whether another writer gets an audit event in while the engine waits on AWS."""
    written: list[bool] = []

    def write() -> None:
        AuditLogger().log(
            EventType.API_CALL,
            subject_type="endpoint",
            subject_id="POST /api/v1/emergency-stop",
            actor="sre",
            outcome="engaged",
        )
        written.append(True)

    other = threading.Thread(target=write, daemon=True)
    other.start()
    other.join(WAIT_SECONDS)
    return written == [True]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_judge_after_a_backup_waits_on_aws_without_the_audit_lock(
    faults: Faults, request: pytest.FixtureRequest, database: str
) -> None:
    if database == "postgresql":
        request.getfixturevalue("postgres_url")
    volume = undo.ec2().create_volume(
        AvailabilityZone="us-east-1a",
        Size=8,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "delme"}]}],
    )["VolumeId"]
    action = undo.plan(faults)[volume]
    with session_scope() as session:
        ActionPlanner().approve(session, action, "alice")
    got_in: list[bool] = []

    def while_aws_answers_the_judge(**_: Any) -> None:
        # The describe of the judge after the backup: the snapshot is made by then.
        if "CreateSnapshot" in faults.calls and not got_in:
            got_in.append(audited_write_from_another_connection())

    faults.session.events.register("before-call.ec2.DescribeVolumes", while_aws_answers_the_judge)
    report = undo.engine(faults).execute([action], dry_run=False, triggered_by="test")

    assert report.count("succeeded") == 1
    assert got_in == [True]
    assert AuditLogger().verify().ok
