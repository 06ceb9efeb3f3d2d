"""An alarm fires a rollback only if it went INTO alarm after the action: its reason text
being refreshed (StateUpdatedTimestamp) while it kept firing does not count."""

from __future__ import annotations

import datetime as dt

from backend.core.rollback_triggers import alarm_since

BEFORE = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)
AFTER = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)


def test_the_transition_time_wins_over_a_refreshed_reason() -> None:
    alarm = {"StateTransitionedTimestamp": BEFORE, "StateUpdatedTimestamp": AFTER}
    assert alarm_since(alarm) == BEFORE


def test_without_a_transition_time_the_update_time_is_used_and_made_aware() -> None:
    assert alarm_since({"StateUpdatedTimestamp": AFTER.replace(tzinfo=None)}) == AFTER
    assert alarm_since({}) is None
