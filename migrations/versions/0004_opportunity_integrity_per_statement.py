"""opportunity integrity per statement: the foreign key to resources checked set-wise

An opportunity names a resource (`resource_pk`); deleting the resource deletes its
opportunities. A foreign key said so, and PostgreSQL checked it row by row: an index lookup
and a row lock on the resource for each opportunity inserted. A first evaluation of 20
policies over 1,000,000 resources inserts ~490,000 opportunities, and those checks took
2.7 s of its 8 s.

The same rules now hold by triggers that work on whole statements:
- an insert into `opportunities` is refused (SQLSTATE 23503, as the foreign key was) if any
  of its rows names no resource: one anti-join over the statement's new rows (0.4 s for
  490,000);
- `resource_pk` and `resources.id` never change (a foreign key would have checked a change):
  AFTER UPDATE OF that column, because a BEFORE row trigger, even one that does not fire,
  makes PostgreSQL fetch and lock each old row first (0.4 s of re-evaluating 490,000);
- deleting resources deletes their opportunities in the same statement (ON DELETE CASCADE);
  truncating resources truncates opportunities.
A row lock no longer holds the resource while an opportunity is inserted. The evaluator,
the one bulk writer, holds `opportunities` in SHARE ROW EXCLUSIVE mode until it commits;
the delete trigger's DELETE FROM opportunities waits for that, then sees what it wrote.

The sequence of opportunity ids hands out 1,000 numbers at a time to each session (0.3 s of
the same insert): ids keep their order within a session and may leave gaps.

SQLite has no statement-level transition tables; row triggers do the same there (cheap:
SQLite's foreign key was a row lookup too).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FK = "fk_opportunities_resource_pk_resources"
MISSING = "opportunities name resources that do not exist"

POSTGRESQL_UP = [
    f"""
CREATE FUNCTION finops_opportunities_resources_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE missing bigint;
BEGIN
  SELECT n.resource_pk INTO missing FROM finops_new_opportunities n
  WHERE NOT EXISTS (SELECT FROM resources r WHERE r.id = n.resource_pk) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
      MESSAGE = format('{MISSING} (resource_pk %s, for one)', missing),
      TABLE = 'opportunities', CONSTRAINT = '{FK}';
  END IF;
  RETURN NULL;
END $$""",
    """
CREATE TRIGGER opportunities_resources_exist AFTER INSERT ON opportunities
REFERENCING NEW TABLE AS finops_new_opportunities
FOR EACH STATEMENT EXECUTE FUNCTION finops_opportunities_resources_exist()""",
    """
CREATE FUNCTION finops_key_unchanged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
    MESSAGE = format('%I.%I never changes', TG_TABLE_NAME, TG_ARGV[0]);
END $$""",
    """
CREATE TRIGGER opportunities_resource_unchanged AFTER UPDATE OF resource_pk ON opportunities
FOR EACH ROW WHEN (OLD.resource_pk IS DISTINCT FROM NEW.resource_pk)
EXECUTE FUNCTION finops_key_unchanged('resource_pk')""",
    """
CREATE TRIGGER resources_id_unchanged AFTER UPDATE OF id ON resources
FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
EXECUTE FUNCTION finops_key_unchanged('id')""",
    """
CREATE FUNCTION finops_resources_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM opportunities o USING finops_gone_resources g WHERE o.resource_pk = g.id;
  RETURN NULL;
END $$""",
    """
CREATE TRIGGER resources_cascade_opportunities AFTER DELETE ON resources
REFERENCING OLD TABLE AS finops_gone_resources
FOR EACH STATEMENT EXECUTE FUNCTION finops_resources_gone()""",
    """
CREATE FUNCTION finops_resources_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE opportunities CASCADE;
  RETURN NULL;
END $$""",
    """
CREATE TRIGGER resources_truncate_opportunities BEFORE TRUNCATE ON resources
FOR EACH STATEMENT EXECUTE FUNCTION finops_resources_truncated()""",
    "ALTER SEQUENCE opportunities_id_seq CACHE 1000",
]
POSTGRESQL_DOWN = [
    "ALTER SEQUENCE opportunities_id_seq CACHE 1",
    "DROP TRIGGER resources_truncate_opportunities ON resources",
    "DROP TRIGGER resources_cascade_opportunities ON resources",
    "DROP TRIGGER resources_id_unchanged ON resources",
    "DROP TRIGGER opportunities_resource_unchanged ON opportunities",
    "DROP TRIGGER opportunities_resources_exist ON opportunities",
    "DROP FUNCTION finops_resources_truncated()",
    "DROP FUNCTION finops_resources_gone()",
    "DROP FUNCTION finops_key_unchanged()",
    "DROP FUNCTION finops_opportunities_resources_exist()",
]
SQLITE_UP = [
    f"""
CREATE TRIGGER opportunities_resources_exist BEFORE INSERT ON opportunities
WHEN NOT EXISTS (SELECT 1 FROM resources WHERE id = NEW.resource_pk)
BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: {MISSING}'); END""",
    """
CREATE TRIGGER opportunities_resource_unchanged BEFORE UPDATE OF resource_pk ON opportunities
WHEN OLD.resource_pk IS NOT NEW.resource_pk
BEGIN SELECT RAISE(ABORT, 'opportunities.resource_pk never changes'); END""",
    """
CREATE TRIGGER resources_id_unchanged BEFORE UPDATE OF id ON resources
WHEN OLD.id IS NOT NEW.id
BEGIN SELECT RAISE(ABORT, 'resources.id never changes'); END""",
    """
CREATE TRIGGER resources_cascade_opportunities AFTER DELETE ON resources
BEGIN DELETE FROM opportunities WHERE resource_pk = OLD.id; END""",
]
SQLITE_DOWN = [
    "DROP TRIGGER resources_cascade_opportunities",
    "DROP TRIGGER resources_id_unchanged",
    "DROP TRIGGER opportunities_resource_unchanged",
    "DROP TRIGGER opportunities_resources_exist",
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")
    for statement in POSTGRESQL_UP if postgresql else SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRESQL_DOWN if postgresql else SQLITE_DOWN:
        op.execute(statement)
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.create_foreign_key(FK, "resources", ["resource_pk"], ["id"], ondelete="CASCADE")
