"""opportunity derived key: an opportunity's id is (resource, policy), one B-tree per row

An opportunity had a sequence id and a unique (policy_name, resource_pk): every insert
updated two B-trees. The second cost 1.5 - 1.8 s of a first evaluation of 1,000,000 stored
resources (487,417 opportunities, docs/benchmarks.md). The id is now the key itself:
resource_pk * 8192 + the policy's number, from the new table `policy_numbers` (each policy
name evaluated, numbered once, never reused). The primary key keeps (policy, resource)
unique as long as each id holds its own resource and policy, which the database checks:
- a check constraint: the id's resource part is its resource_pk, below 2^40;
- the statement trigger of 0004, which already reads each insert's new rows: each
  (policy_name, id % 8192) among them is a pair of `policy_numbers` (one hash aggregate of
  the new rows, about 0.1 s for 487,000);
- an id or a policy_name never changes (AFTER UPDATE OF those columns: nothing updates them,
  so it never fires, and costs the evaluator's updates nothing).

Existing opportunities are renumbered, and the actions that name them follow. The ids stay
below 2^53 (JavaScript's exact integers) while resource_pk is below 2^40. The API's default
order of opportunities (by id, descending) is now the newest resource first, then the
policy, where it was the order the opportunities were found in.

The code of 0010 inserts opportunities by the sequence and upserts on the unique key: it
cannot run on this schema.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
older_code_compatible = False

SLOTS = 8192
UNIQUE = "uq_opportunities_policy_resource"
CHECK = "ck_opportunities_id_is_key"
CHECK_SQL = (
    f"id / {SLOTS} = resource_pk AND id % {SLOTS} BETWEEN 1 AND {SLOTS - 1}"
    f" AND resource_pk < {2**40}"
)
ACTIONS_FK = "fk_actions_opportunity_id_opportunities"
NEW_ID = f"""(SELECT o.resource_pk * {SLOTS} + n.number FROM policy_numbers n
              WHERE n.policy_name = o.policy_name)"""
EXISTS_CHECK = """
  SELECT n.resource_pk INTO missing FROM finops_new_opportunities n
  WHERE NOT EXISTS (SELECT FROM resources r WHERE r.id = n.resource_pk) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
      MESSAGE = format('opportunities name resources that do not exist (resource_pk %s, for one)',
        missing),
      TABLE = 'opportunities', CONSTRAINT = 'fk_opportunities_resource_pk_resources';
  END IF;"""
# 0004's function, and the same with the policies' numbers checked too.
POSTGRESQL_INSERT_CHECK = {
    "0004": f"""
CREATE OR REPLACE FUNCTION finops_opportunities_resources_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE missing bigint;
BEGIN{EXISTS_CHECK}
  RETURN NULL;
END $$""",
    "0011": f"""
CREATE OR REPLACE FUNCTION finops_opportunities_resources_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE missing bigint; policy text;
BEGIN{EXISTS_CHECK}
  SELECT u.policy_name INTO policy
  FROM (SELECT DISTINCT n.policy_name, n.id % {SLOTS} AS number
        FROM finops_new_opportunities n) u
  WHERE NOT EXISTS (SELECT FROM policy_numbers p
                    WHERE p.policy_name = u.policy_name AND p.number = u.number) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'check_violation',
      MESSAGE = format('opportunities of policy %s have ids without its number'
        ' (policy_numbers): an id is resource_pk * {SLOTS} + the number', policy),
      TABLE = 'opportunities', CONSTRAINT = 'opportunities_policy_number';
  END IF;
  RETURN NULL;
END $$""",
}
KEY_UNCHANGED = """
CREATE TRIGGER opportunities_key_unchanged AFTER UPDATE OF id, policy_name ON opportunities
FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.policy_name IS DISTINCT FROM NEW.policy_name)
EXECUTE FUNCTION finops_key_unchanged('id and policy_name')"""  # noqa: E501
SQLITE_KEY_CHECKS = [
    f"""
CREATE TRIGGER opportunities_policy_number BEFORE INSERT ON opportunities
WHEN NOT EXISTS (SELECT 1 FROM policy_numbers
                 WHERE policy_name = NEW.policy_name AND number = NEW.id % {SLOTS})
BEGIN SELECT RAISE(ABORT, 'an opportunity id holds its policy''s number (policy_numbers)'); END""",
    """
CREATE TRIGGER opportunities_key_unchanged BEFORE UPDATE OF id, policy_name ON opportunities
WHEN OLD.id IS NOT NEW.id OR OLD.policy_name IS NOT NEW.policy_name
BEGIN SELECT RAISE(ABORT, 'opportunities.id and policy_name never change'); END""",
]
# SQLite's triggers of 0004 that name opportunities: copying the table drops its own, and
# SQLite refuses to rename the copy while another table's trigger names a missing table.
CASCADE = "resources_cascade_opportunities"
SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER {CASCADE} AFTER DELETE ON resources
BEGIN DELETE FROM opportunities WHERE resource_pk = OLD.id; END""",
    """
CREATE TRIGGER opportunities_resources_exist BEFORE INSERT ON opportunities
WHEN NOT EXISTS (SELECT 1 FROM resources WHERE id = NEW.resource_pk)
BEGIN SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: opportunities name resources that do not exist'); END""",  # noqa: E501
    """
CREATE TRIGGER opportunities_resource_unchanged BEFORE UPDATE OF resource_pk ON opportunities
WHEN OLD.resource_pk IS NOT NEW.resource_pk
BEGIN SELECT RAISE(ABORT, 'opportunities.resource_pk never changes'); END""",
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _refuse_what_does_not_fit()
    op.create_table(
        "policy_numbers",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=False),
        sa.CheckConstraint(f"number BETWEEN 1 AND {SLOTS - 1}", name="ck_policy_numbers_range"),
        sa.PrimaryKeyConstraint("number", name="pk_policy_numbers"),
        sa.UniqueConstraint("policy_name", name="uq_policy_numbers_policy_name"),
    )
    op.execute(
        "INSERT INTO policy_numbers (number, policy_name) "
        "SELECT row_number() OVER (ORDER BY policy_name), policy_name "
        "FROM (SELECT DISTINCT policy_name FROM opportunities) AS names"
    )
    if postgresql:
        op.execute(f"ALTER TABLE actions DROP CONSTRAINT {ACTIONS_FK}")
    # The actions first, while the opportunities still have their old ids.
    op.execute(
        f"UPDATE actions AS a SET opportunity_id = o.resource_pk * {SLOTS} + n.number "
        "FROM opportunities o JOIN policy_numbers n ON n.policy_name = o.policy_name "
        "WHERE a.opportunity_id = o.id"
    )
    if postgresql:
        op.execute("ALTER TABLE opportunities DROP CONSTRAINT pk_opportunities")
        op.execute(f"ALTER TABLE opportunities DROP CONSTRAINT {UNIQUE}")
        op.execute(f"UPDATE opportunities o SET id = {NEW_ID}")
        op.execute("ALTER TABLE opportunities ADD CONSTRAINT pk_opportunities PRIMARY KEY (id)")
        op.execute("ALTER TABLE opportunities ALTER COLUMN id DROP DEFAULT")
        op.execute("DROP SEQUENCE opportunities_id_seq")
        op.execute(f"ALTER TABLE opportunities ADD CONSTRAINT {CHECK} CHECK ({CHECK_SQL})")
        op.execute(
            f"ALTER TABLE actions ADD CONSTRAINT {ACTIONS_FK} FOREIGN KEY (opportunity_id) "
            "REFERENCES opportunities (id)"
        )
        op.execute(POSTGRESQL_INSERT_CHECK["0011"])
        op.execute(KEY_UNCHANGED)
        return
    # SQLite checks the primary key row by row: through negative ids, which no old id is.
    op.execute(f"UPDATE opportunities AS o SET id = -{NEW_ID}")
    op.execute("UPDATE opportunities SET id = -id")
    op.execute(f"DROP TRIGGER {CASCADE}")
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_constraint(UNIQUE, type_="unique")
        batch_op.create_check_constraint(op.f(CHECK), sa.text(CHECK_SQL))
    for statement in [*SQLITE_TRIGGERS, *SQLITE_KEY_CHECKS]:
        op.execute(statement)


def downgrade() -> None:
    """The ids stay as they are (unique integers all the same); new ones come from a
    sequence again, after the largest."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER opportunities_key_unchanged ON opportunities")
        op.execute(POSTGRESQL_INSERT_CHECK["0004"])
        op.execute(f"ALTER TABLE opportunities DROP CONSTRAINT {CHECK}")
        op.execute(
            f"ALTER TABLE opportunities ADD CONSTRAINT {UNIQUE} UNIQUE (policy_name, resource_pk)"
        )
        op.execute("CREATE SEQUENCE opportunities_id_seq CACHE 1000 OWNED BY opportunities.id")
        op.execute(
            "SELECT setval('opportunities_id_seq', (SELECT coalesce(max(id), 0) + 1 "
            "FROM opportunities), false)"
        )
        op.execute(
            "ALTER TABLE opportunities ALTER COLUMN id SET DEFAULT nextval('opportunities_id_seq')"
        )
    else:
        op.execute(f"DROP TRIGGER {CASCADE}")
        with op.batch_alter_table("opportunities", schema=None) as batch_op:
            batch_op.drop_constraint(op.f(CHECK), type_="check")
            batch_op.create_unique_constraint(UNIQUE, ["policy_name", "resource_pk"])
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
    op.drop_table("policy_numbers")


def _refuse_what_does_not_fit() -> None:
    connection = op.get_bind()
    names = connection.scalar(sa.text("SELECT count(DISTINCT policy_name) FROM opportunities"))
    top = connection.scalar(sa.text("SELECT max(resource_pk) FROM opportunities"))
    if (names or 0) >= SLOTS or (top or 0) >= 2**40:
        raise RuntimeError(
            f"cannot give opportunities derived ids: {names} policy names (at most "
            f"{SLOTS - 1}) and resource_pk up to {top} (below 2^40)"
        )
