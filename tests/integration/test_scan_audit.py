"""A scan's audit events against a moto_server: started, opportunities found, finished."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, text

from backend.config import get_settings
from backend.core import scan_service
from backend.core.audit_chain import AuditEvent
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import get_engine, session_scope
from backend.core.migrations import upgrade
from backend.core.models import ResourceRow, ScanRunRow
from backend.core.scan_audit import opportunity_summary
from backend.core.scan_service import ScanOutcome, ScanService
from backend.core.types import utcnow
from backend.domain.policy import load_text
from tests.integration.aws_fleet import client

pytestmark = pytest.mark.moto_server

PACK = """
policies:
  - name: delete-unattached
    resource: ebs
    filters: [unattached]
    action: {type: delete, backup: true}
    mode: report
  - name: release-unused-eips
    resource: elastic-ip
    filters: [unassociated]
    action: release
    mode: report
"""


def ec2(url: str) -> Any:
    return client(url, "ec2", "us-east-1")


def volume(url: str) -> str:
    made = ec2(url).create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")
    return str(made["VolumeId"])


def scan(at: dt.datetime | None = None) -> ScanOutcome:
    pack = load_text(PACK, "scan-audit-test.yml")
    service = ScanService(get_settings(), now=(lambda: at) if at else utcnow)
    return service.run(pack=pack, regions=["us-east-1"])


def scan_events(scan_id: int) -> list[AuditEvent]:
    return [
        e
        for e in AuditLogger().events("1h")
        if e.subject_type == "scan" and e.subject_id == str(scan_id)
    ]


def test_a_scan_writes_its_events_and_the_chain_holds(moto_url: str, any_database: str) -> None:
    upgrade()
    gone, kept = volume(moto_url), volume(moto_url)
    first = scan()
    started, found, finished = scan_events(first.scan_id)
    assert (started.event_type, started.outcome, started.actor) == ("scan", "started", "scanner")
    assert started.details["regions"] == ["us-east-1"]
    assert started.details["kinds"] == ["ebs", "elastic-ip"]
    assert started.details["policies"] == ["delete-unattached", "release-unused-eips"]
    assert (found.event_type, found.outcome) == ("opportunity", "found")
    per = found.details["policies"]
    assert per["delete-unattached"]["found"] == per["delete-unattached"]["new"] == 2
    assert per["release-unused-eips"] == {
        "found": 0,
        "new": 0,
        "still_open": 0,
        "resolved": 0,
        "monthly_savings": 0.0,
    }
    expected = round(sum(o.monthly_savings or 0.0 for o in first.opportunities), 2)
    assert found.details["monthly_savings"] == expected > 0
    assert (finished.event_type, finished.outcome) == ("scan", "complete")
    resources = len(first.discovery.resources)
    assert (finished.details["resources"], finished.details["error_count"]) == (resources, 0)
    assert finished.details["errors"] == {} and finished.details["seconds"] >= 0

    ec2(moto_url).delete_volume(VolumeId=gone)
    added = volume(moto_url)
    second = scan()
    _, found, _ = scan_events(second.scan_id)
    counts = found.details["policies"]["delete-unattached"]
    assert {k: counts[k] for k in ("found", "new", "still_open", "resolved")} == {
        "found": 2,  # kept and added
        "new": 1,
        "still_open": 1,
        "resolved": 1,  # gone
    }
    assert {o.resource.resource_id for o in second.opportunities} == {kept, added}
    assert second.audit_errors == []
    report = AuditLogger().verify()
    assert report.ok, report


def test_a_scan_whose_audit_log_cannot_be_written_keeps_its_result_and_says_so(
    moto_url: str, any_database: str
) -> None:
    upgrade()
    vid = volume(moto_url)
    with get_engine().begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))
    outcome = scan()
    # the scan changed nothing in AWS: what it learnt is kept...
    assert outcome.status == "complete"
    assert [o.resource.resource_id for o in outcome.opportunities] == [vid]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ResourceRow)) >= 1
        run = session.get(ScanRunRow, outcome.scan_id)
        assert run is not None and run.status == "complete"
        # ...and the gap in the audit log shows, on the run and in the outcome
        assert "audit event not written" in run.failures["audit-log"]
    assert len(outcome.audit_errors) == 3  # started, found, finished
    assert all(
        "audit event not written (scan" in e or "(opportunity" in e for e in outcome.audit_errors
    )


def test_a_scan_that_raises_is_marked_failed_and_audited(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("discovery crashed")

    monkeypatch.setattr(scan_service.Discoverer, "run", broken)
    with pytest.raises(RuntimeError, match="discovery crashed"):
        scan()
    with session_scope() as session:
        run = session.scalars(select(ScanRunRow)).one()
        assert (run.status, run.failures["scan"]) == ("failed", "RuntimeError: discovery crashed")
        assert run.finished_at is not None
    started, failed = scan_events(run.id)
    assert (started.outcome, failed.outcome) == ("started", "failed")
    assert failed.details["error"] == "RuntimeError: discovery crashed"
    assert AuditLogger().verify().ok


def test_the_summary_read_back_after_an_evaluation_matches_the_scans_own(
    moto_url: str, any_database: str
) -> None:
    # What an evaluation that writes its own findings (StoredPolicyEvaluator) would audit.
    upgrade()
    gone = volume(moto_url)
    volume(moto_url)
    t0 = utcnow().replace(microsecond=0)
    scan(t0)
    ec2(moto_url).delete_volume(VolumeId=gone)
    volume(moto_url)
    later = scan(t0 + dt.timedelta(hours=1))
    _, found, _ = scan_events(later.scan_id)
    with session_scope() as session:
        summary = opportunity_summary(
            session, ["delete-unattached", "release-unused-eips"], t0 + dt.timedelta(hours=1)
        )
    assert summary == found.details
    assert (summary["new"], summary["still_open"], summary["resolved"]) == (1, 1, 1)
