"""A worker's action task, run in this process against the real Redis and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from backend.config import reset_settings_cache
from backend.core.migrations import upgrade
from backend.domain.policy import PolicyValidationError
from backend.runtime import services, tasks
from backend.runtime.dispatch import QUEUED_KEY


def test_a_task_that_cannot_start_drops_its_queued_mark(
    broker: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark keeps an action from being queued twice; left behind by a task that failed
    before running (here, a broken policy pack), it held the action back until it expired."""
    broken = tmp_path / "broken.yml"
    broken.write_text("policies:\n  - name: x\n    resource: nonsense\n")
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(broken))
    reset_settings_cache()
    services.reset()
    upgrade()
    broker.set(QUEUED_KEY.format(5), "1")

    try:
        with pytest.raises(PolicyValidationError):
            tasks.execute_action(5, None, True)
    finally:
        services.reset()  # no other test may get this process's services with the broken pack

    assert broker.get(QUEUED_KEY.format(5)) is None
