"""Faults between us and AWS: the scan finishes, says what failed, and marks nothing gone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ResourceRow, ScanRunRow
from backend.core.scan_service import ScanService
from tests.integration.aws_fleet import seed_region
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server
REGIONS = ["us-east-1", "us-west-2"]


@pytest.fixture
def proxy(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    for region in REGIONS:
        seed_region(moto_url, region, instances=2)
    fault_proxy = FaultProxy(upstream=moto_url).start()
    upgrade()
    ScanService(get_settings()).run(regions=REGIONS)  # a clean baseline through moto itself
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    reset_settings_cache()
    yield fault_proxy
    fault_proxy.stop()


def live_count(region: str) -> int:
    with session_scope() as session:
        return len(
            session.scalars(
                select(ResourceRow).where(
                    ResourceRow.region == region, ResourceRow.gone_at.is_(None)
                )
            ).all()
        )


def test_access_denied_in_one_region_is_reported_and_marks_nothing_gone(
    proxy: FaultProxy,
) -> None:
    before = live_count("us-west-2")
    proxy.faults.append(Fault(region="us-west-2", kind="access-denied"))
    outcome = ScanService(get_settings()).run(regions=REGIONS)
    assert outcome.status == "partial"
    failed = {part.split("/")[1] for part in outcome.discovery.failures}
    assert failed == {"us-west-2"}
    assert all("UnauthorizedOperation" in why for why in outcome.discovery.failures.values())
    assert outcome.gone == 0
    assert live_count("us-west-2") == before
    assert any(r.region == "us-east-1" for r in outcome.discovery.resources)
    with session_scope() as session:
        latest = session.scalars(select(ScanRunRow).order_by(ScanRunRow.id.desc())).first()
        assert latest is not None and latest.status == "partial"
        assert any("us-west-2" in part for part in latest.failures)


def test_throttling_is_retried_until_it_passes(proxy: FaultProxy) -> None:
    fault = Fault(service="ec2", kind="throttle", times=6)
    proxy.faults.append(fault)
    outcome = ScanService(get_settings()).run(regions=REGIONS)
    assert fault.hits == 6
    assert outcome.status == "complete", outcome.discovery.failures
    assert outcome.gone == 0


def test_a_dropped_connection_is_retried(proxy: FaultProxy) -> None:
    fault = Fault(service="rds", kind="drop", times=2)
    proxy.faults.append(fault)
    outcome = ScanService(get_settings()).run(regions=REGIONS)
    assert fault.hits == 2
    assert outcome.status == "complete", outcome.discovery.failures


def test_an_endpoint_that_stays_down_fails_only_its_part(proxy: FaultProxy) -> None:
    proxy.faults.append(Fault(service="elasticloadbalancing", kind="unavailable"))
    outcome = ScanService(get_settings()).run(regions=REGIONS)
    assert outcome.status == "partial"
    assert sorted(outcome.discovery.failures) == [
        "123456789012/us-east-1/elb",
        "123456789012/us-west-2/elb",
    ]
    assert outcome.gone == 0
    with session_scope() as session:
        lbs = session.scalars(select(ResourceRow).where(ResourceRow.kind == "elb")).all()
        assert lbs and all(r.gone_at is None for r in lbs)
