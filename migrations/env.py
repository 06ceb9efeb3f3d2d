"""Alembic environment: the URL comes from the caller or from the project's settings.

SQLite: the whole run is one transaction begun with BEGIN IMMEDIATE (one writer at a time),
so that a failure anywhere leaves the database as it was. See backend/core/migration_env.py.
"""

from __future__ import annotations

from alembic import context

from backend.core import migration_env
from backend.core.database import database_url
from backend.core.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or database_url()
engine = migration_env.migration_engine(url)
try:
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Begun here, so Alembic commits nothing of its own: this block decides.
            transaction = connection.begin()
            try:
                migration_env.drop_stale_batch_tables(connection)
                context.configure(
                    connection=connection,
                    target_metadata=Base.metadata,
                    render_as_batch=True,
                    compare_type=True,
                )
                context.run_migrations()
                migration_env.check_references(connection)
            except BaseException:
                transaction.rollback()
                raise
            transaction.commit()
        else:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
finally:
    engine.dispose()
