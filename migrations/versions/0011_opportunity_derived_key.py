"""opportunity derived key: an opportunity's id is (resource, policy), one B-tree per row

An opportunity had a sequence id and a unique (policy_name, resource_pk): every insert
updated two B-trees. The second cost 1.5 - 1.8 s of a first evaluation of 1,000,000 stored
resources (487,417 opportunities, docs/benchmarks.md). The id is now the key itself:
resource_pk * 8192 + the policy's number, from the new table `policy_numbers` (each name
that ever had an opportunity, numbered once, never reused). The primary key alone keeps
(policy, resource) unique; a check keeps each id's resource part equal to its resource_pk.

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
CHECK_SQL = f"id / {SLOTS} = resource_pk AND id % {SLOTS} BETWEEN 1 AND {SLOTS - 1}"
ACTIONS_FK = "fk_actions_opportunity_id_opportunities"
NEW_ID = f"""(SELECT o.resource_pk * {SLOTS} + n.number FROM policy_numbers n
              WHERE n.policy_name = o.policy_name)"""
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
        return
    # SQLite checks the primary key row by row: through negative ids, which no old id is.
    op.execute(f"UPDATE opportunities AS o SET id = -{NEW_ID}")
    op.execute("UPDATE opportunities SET id = -id")
    op.execute(f"DROP TRIGGER {CASCADE}")
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_constraint(UNIQUE, type_="unique")
        batch_op.create_check_constraint(op.f(CHECK), sa.text(CHECK_SQL))
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    """The ids stay as they are (unique integers all the same); new ones come from a
    sequence again, after the largest."""
    if op.get_bind().dialect.name == "postgresql":
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
