"""change notifications: commits to the tables behind the API's read caches notify them

The API keeps list pages and token checks in memory (backend/api/change_feed.py) and must
hear of every commit that could change them. Statement-level triggers notify the channel
`finops_change` with the table's name (PostgreSQL sends it when the transaction commits,
once per table and transaction, and never for one rolled back):
- any insert, update, delete or truncate of `resources`, `opportunities` or `actions` (one
  notification for an evaluation's 490,000 rows, not one per row);
- a token revoked, re-dated, re-keyed or deleted; a user's role, name or disabled flag
  changed, or a user deleted. A token's last_used_at, written once a minute, and new
  tokens or users change no cached check and do not notify.
SQLite has no notifications: there the API caches nothing, and nothing is created.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
# Triggers that only send notifications, which the code of 0009 never listens to.
older_code_compatible = True

FUNCTION = """
CREATE FUNCTION finops_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('finops_change', TG_TABLE_NAME);
  RETURN NULL;
END $$"""
ANY_CHANGE = "INSERT OR UPDATE OR DELETE OR TRUNCATE"
TRIGGERS = {  # table: the events that notify
    "resources": ANY_CHANGE,
    "opportunities": ANY_CHANGE,
    "actions": ANY_CHANGE,
    "api_tokens": "UPDATE OF revoked_at, expires_at, token_hash, user_id OR DELETE OR TRUNCATE",
    "users": "UPDATE OF role, disabled, username, id OR DELETE OR TRUNCATE",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for table, events in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {table}_notify_change AFTER {events} ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION finops_notify_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TRIGGERS:
        op.execute(f"DROP TRIGGER {table}_notify_change ON {table}")
    op.execute("DROP FUNCTION finops_notify_change()")
