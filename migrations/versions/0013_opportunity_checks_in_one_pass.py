"""opportunity checks in one pass: the insert trigger's two checks, planned for bulk

0004's statement trigger checks that each new opportunity names a resource, and 0011's
addition that each id holds its policy's number. On a first evaluation of 1,000,000 stored
resources (487,417 new opportunities) they cost about 1.0 s of a 2.6 s insert:
- the resources were probed one index lookup per new row (a nested loop, 0.5 - 0.7 s);
- the policies' numbers took a second pass over the new rows.

The same checks, cheaper:
- one pass over the new rows groups them by (policy_name, id % 8192), joins the groups (a
  few dozen) to `policy_numbers`, and takes the smallest and largest resource_pk;
- where the new rows are dense in that range (an evaluation's insert), their resource_pks,
  sorted, are merged with the resources' primary key read in order between those two (a
  merge anti-join: the trigger's function disables the other join methods, whose costs the
  planner misjudges for a transition table); where they are few across it (a small kind's
  insert, one row), each is looked up in the primary key. The break-even, measured: an index
  probe costs about 1.2 microseconds a row, the merge about 0.2 a row sorted and 0.15 an
  index entry read; merging when the range is under 6 rows an id.
The insert takes about 2.0 s where it took 2.6 s (docs/benchmarks.md). What is refused,
and the errors that say so, are those of 0011.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
older_code_compatible = True

SLOTS = 8192
MISSING = """
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
      MESSAGE = format('opportunities name resources that do not exist (resource_pk %s, for one)',
        missing),
      TABLE = 'opportunities', CONSTRAINT = 'fk_opportunities_resource_pk_resources';
  END IF;"""
WRONG_NUMBER = f"""
    RAISE EXCEPTION USING ERRCODE = 'check_violation',
      MESSAGE = format('opportunities of policy %s have ids without its number'
        ' (policy_numbers): an id is resource_pk * {SLOTS} + the number', policy),
      TABLE = 'opportunities', CONSTRAINT = 'opportunities_policy_number';"""
ONE_PASS = f"""
CREATE OR REPLACE FUNCTION finops_opportunities_resources_exist() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET enable_hashjoin = off AS $$
DECLARE lo bigint; hi bigint; total bigint; policy text; missing bigint;
BEGIN
  SELECT min(g.lo), max(g.hi), sum(g.rows), min(g.policy_name) FILTER (WHERE p.number IS NULL)
  INTO lo, hi, total, policy
  FROM (SELECT n.policy_name, n.id % {SLOTS} AS number, min(n.resource_pk) AS lo,
               max(n.resource_pk) AS hi, count(*) AS rows
        FROM finops_new_opportunities n GROUP BY 1, 2) g
  LEFT JOIN policy_numbers p ON p.policy_name = g.policy_name AND p.number = g.number;
  IF policy IS NOT NULL THEN{WRONG_NUMBER}
  END IF;
  IF hi - lo < 6 * total THEN  -- the range is dense with them: read it in order
    SELECT n.resource_pk INTO missing FROM finops_new_opportunities n
    WHERE NOT EXISTS (SELECT FROM resources r
                      WHERE r.id = n.resource_pk AND r.id BETWEEN lo AND hi) LIMIT 1;
  ELSE  -- few across a wide range: one probe each (a subquery, which is no join)
    SELECT n.resource_pk INTO missing FROM finops_new_opportunities n
    WHERE (SELECT r.id FROM resources r WHERE r.id = n.resource_pk) IS NULL LIMIT 1;
  END IF;{MISSING}
  RETURN NULL;
END $$"""
# 0011's function, as it was.
TWO_PASSES = f"""
CREATE OR REPLACE FUNCTION finops_opportunities_resources_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE missing bigint; policy text;
BEGIN
  SELECT n.resource_pk INTO missing FROM finops_new_opportunities n
  WHERE NOT EXISTS (SELECT FROM resources r WHERE r.id = n.resource_pk) LIMIT 1;{MISSING}
  SELECT u.policy_name INTO policy
  FROM (SELECT DISTINCT n.policy_name, n.id % {SLOTS} AS number
        FROM finops_new_opportunities n) u
  WHERE NOT EXISTS (SELECT FROM policy_numbers p
                    WHERE p.policy_name = u.policy_name AND p.number = u.number) LIMIT 1;
  IF FOUND THEN{WRONG_NUMBER}
  END IF;
  RETURN NULL;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite checks row by row, as it did
        op.execute(ONE_PASS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(TWO_PASSES)
