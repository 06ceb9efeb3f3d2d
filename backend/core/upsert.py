"""INSERT ... ON CONFLICT DO UPDATE for SQLite and PostgreSQL alike, and its variant for
tables whose rows are rewritten again and again under a sequence-drawn id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

BATCH = 2000  # rows per lookup and write: a key list the databases take in one statement


def dialect_insert(session: Session, model: type[Any]) -> Any:
    """`INSERT` with ON CONFLICT support, in the session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind(model).dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def upsert_rows(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    conflict_columns: Sequence[str],
    update_columns: Sequence[str],
) -> None:
    """Insert rows, updating `update_columns` of those whose conflict key already exists."""
    if not rows:
        return
    stmt = dialect_insert(session, model)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict_columns),
        set_={name: stmt.excluded[name] for name in update_columns},
    )
    session.execute(stmt, list(rows))


def rewrite_rows(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    key_columns: Sequence[str],
    update_columns: Sequence[str],
) -> None:
    """Like upsert_rows, for a table with a sequence-drawn `id` and a unique natural key:
    the rows already there are updated by their id, only the new ones inserted.

    Not one upsert: PostgreSQL draws an id from the sequence for every row an INSERT ...
    ON CONFLICT attempts, updated or not. Rescanning 10,000,000 resources every 15 minutes
    would spend resource ids up to an opportunity key's limit (2^40, models.py) in about
    three years, and metric summaries' 32-bit ids within weeks. The new rows still go in as
    an upsert, for a concurrent writer that inserted them meanwhile; a row deleted between
    the lookup and the update is written again.
    """
    table = cast(Table, model.__table__)
    key = tuple_(*[table.c[name] for name in key_columns])
    for i in range(0, len(rows), BATCH):
        batch = rows[i : i + BATCH]
        keys = [tuple(row[name] for name in key_columns) for row in batch]
        known = {
            tuple(found[1:]): found[0]
            for found in session.execute(
                select(table.c.id, *[table.c[name] for name in key_columns]).where(key.in_(keys))
            )
        }
        updates = [
            {"pk": known[k]} | {name: row[name] for name in update_columns}
            for k, row in zip(keys, batch, strict=True)
            if k in known
        ]
        fresh = [row for k, row in zip(keys, batch, strict=True) if k not in known]
        if updates:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(table)
                    .where(table.c.id == bindparam("pk"))
                    .values({name: bindparam(name) for name in update_columns}),
                    updates,
                ),
            )
            if result.rowcount != len(updates):  # some deleted meanwhile: put them back
                fresh += [row for k, row in zip(keys, batch, strict=True) if k in known]
        upsert_rows(
            session,
            model,
            fresh,
            conflict_columns=key_columns,
            update_columns=update_columns,
        )
