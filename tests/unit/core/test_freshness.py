"""The freshness rule (invariant 1): evidence older than the bound blocks, and says how old."""

from __future__ import annotations

import datetime as dt

from backend.config import load_settings
from backend.core.freshness import max_age_at_execution
from backend.domain.policy import load_text
from backend.domain.safety import Rule, fresh_data

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def test_evidence_within_the_bound_passes() -> None:
    verdict = fresh_data([("inventory of i-1", NOW - DAY)], NOW, DAY)
    assert verdict.rule is Rule.FRESH_DATA and verdict.ok


def test_each_stale_piece_is_named_with_its_age() -> None:
    observed = [
        ("inventory of i-1", NOW - dt.timedelta(hours=2)),
        ("metric CPUUtilization Average 14d of i-1", NOW - dt.timedelta(days=30)),
        ("policy p's selection of i-1", NOW - DAY - dt.timedelta(seconds=1)),
    ]
    verdict = fresh_data(observed, NOW, DAY)
    assert not verdict.ok
    assert verdict.reason == (
        "stale inventory: metric CPUUtilization Average 14d of i-1 is 30d 0h old; "
        "policy p's selection of i-1 is 24h old, beyond the 24h bound "
        "(are the account's scans failing?)"
    )


def test_the_bound_at_execution_adds_the_notice_grace_only() -> None:
    pack = load_text(
        """
policies:
  - {name: told, resource: ebs, filters: [unattached], action: delete, mode: approval,
     notice: {notify: true, grace-days: 7}}
  - {name: untold, resource: ebs, filters: [unattached], action: delete, mode: approval}
""",
        "fresh.yml",
    )
    settings = load_settings(max_inventory_age_hours=6)
    hours = dt.timedelta(hours=6)
    assert max_age_at_execution(settings, pack.by_name["told"]) == hours + 7 * DAY
    assert max_age_at_execution(settings, pack.by_name["untold"]) == hours
    assert max_age_at_execution(settings, None) == hours
