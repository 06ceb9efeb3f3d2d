"""Alembic environment: the URL comes from the caller or from the project's settings.

SQLite: the whole run is one transaction begun with BEGIN IMMEDIATE (one writer at a time),
so that a failure anywhere leaves the database as it was. PostgreSQL: one transaction per
revision, each statement waiting at most FINOPS_MIGRATION_LOCK_TIMEOUT for a lock, so that
a migration queued behind a long transaction fails instead of holding every reader of the
table behind it. A dry run (config.attributes[DRY_RUN]) runs in one transaction, notes the
tables left and rolls back. See backend/core/migration_env.py.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from backend.core import migration_env
from backend.core.database import database_url
from backend.core.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or database_url()
dry_run = config.attributes.get(migration_env.DRY_RUN)
engine = migration_env.migration_engine(url)
record_oldest_code = migration_env.oldest_code_recorder(context.script)
lock_timeout = 0.0
try:
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if not sqlite:
            lock_timeout = migration_env.prepare_postgres(connection)
        if sqlite or dry_run is not None:
            # Begun here, so Alembic commits nothing of its own: this block decides.
            transaction = connection.begin()
            try:
                if sqlite:
                    migration_env.drop_stale_batch_tables(connection)
                context.configure(
                    connection=connection,
                    target_metadata=Base.metadata,
                    render_as_batch=sqlite,
                    compare_type=True,
                    on_version_apply=[record_oldest_code],
                )
                context.run_migrations()
                if sqlite:
                    migration_env.check_references(connection)
                if dry_run is not None:
                    dry_run["tables"] = set(inspect(connection).get_table_names())
            except BaseException:
                transaction.rollback()
                raise
            if dry_run is None:
                transaction.commit()
            else:
                transaction.rollback()
        else:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                compare_type=True,
                transaction_per_migration=True,  # a revision's locks end with it
                on_version_apply=[record_oldest_code],
            )
            with context.begin_transaction():
                context.run_migrations()
except DBAPIError as exc:
    stopped = migration_env.lock_wait_error(exc, lock_timeout)
    if stopped is None:
        raise
    raise stopped from exc
finally:
    engine.dispose()
