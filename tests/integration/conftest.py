"""Fixtures of the integration tests beyond the shared ones (tests/conftest.py)."""

from __future__ import annotations

import pytest

from backend.core.migrations import upgrade


@pytest.fixture
def migrated(any_database: str) -> str:
    """The test's database (SQLite, then PostgreSQL), migrated to head."""
    upgrade()
    return any_database
