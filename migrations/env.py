"""Alembic environment: the URL comes from the caller or from the project's settings."""

from __future__ import annotations

from alembic import context

from backend.core.database import get_engine
from backend.core.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or None
engine = get_engine(url)

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # SQLite alters a table by copying it and dropping the old one, which it refuses
        # while rows elsewhere reference it and foreign keys are enforced: off for the
        # migration (outside a transaction, where the pragma takes effect), checked after.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # else Alembic would run inside this autobegun one, uncommitted
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows with broken references: {broken}")
    finally:
        if sqlite:
            connection.rollback()  # whatever a failure left open, so that the pragma applies
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
