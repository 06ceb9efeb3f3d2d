"""Alembic environment: the URL comes from the caller or from the project's settings."""

from __future__ import annotations

from alembic import context

from backend.core.database import get_engine
from backend.core.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or None
engine = get_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by table copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
