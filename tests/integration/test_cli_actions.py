"""`finops plan` and `finops actions retry` through Typer, on SQLite and PostgreSQL.

`plan` plans only the policies the database lets run; `retry` is dry-run unless --live or
FINOPS_DRY_RUN=false, and is judged again on a fresh describe.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow, OverrideRow
from backend.core.policy_manager import PolicyManager
from backend.core.types import utcnow
from tests.integration import execution_support
from tests.integration.execution_support import Account, scan_and_plan, seed
from tests.support import api_client
from tests.support.api_client import seed_action, seed_resource


def finops(*args: str) -> Result:
    import backend.cli.actions  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    console.width = err.width = 250  # no table cell wraps, whatever the terminal
    return CliRunner().invoke(app, list(args))


def action_states() -> dict[str, str]:
    with session_scope() as session:
        return {r.policy_name: r.state for r in session.scalars(select(ActionRow))}


def use_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    pack = tmp_path / "pack"
    pack.mkdir(exist_ok=True)
    (pack / "pack.yml").write_text(text)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(pack))
    reset_settings_cache()
    return pack


# -- finops plan -------------------------------------------------------------------------------


def test_plan_skips_disabled_paused_and_overridden_policies(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = use_pack(tmp_path, monkeypatch, api_client.PACK)
    migrations.upgrade()
    seed_resource()  # unattached-ebs-delete selects it (available)
    seed_resource(state="in-use", attributes={"State": "in-use", "VolumeType": "gp2"})
    manager = PolicyManager([pack])
    manager.set_enabled("unattached-ebs-delete", False, "bob", "noisy")
    manager.pause("gp2-to-gp3", utcnow() + dt.timedelta(days=1), "bob", "quiet week")

    held = finops("plan")
    assert held.exit_code == 0, held.output
    assert "Plan: 0 new, 0 blocked, 0 already planned" in held.output
    assert "not planned (disabled, paused or overridden): unattached-ebs-delete, gp2-to-gp3" in (
        held.output
    )
    assert action_states() == {}

    # Resumed, but held by a policy-scope override: still nothing from it.
    manager.resume("gp2-to-gp3", "april")
    with session_scope() as session:
        session.add(OverrideRow(scope="policy", target="gp2-to-gp3", reason="x", created_by="c"))
    assert "Plan: 0 new" in finops("plan").output
    assert action_states() == {}

    manager.set_enabled("unattached-ebs-delete", True, "april")
    planned = finops("plan")
    assert planned.exit_code == 0, planned.output
    assert "Plan: 1 new" in planned.output
    assert action_states() == {"unattached-ebs-delete": "awaiting_approval"}


def test_plan_refuses_a_broken_pack(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_pack(tmp_path, monkeypatch, "policies:\n  - name: y\n    resource: spaceship\n")
    refused = finops("plan")
    assert refused.exit_code == 2
    assert "policy pack refused (1 problem(s))" in refused.output and "spaceship" in refused.output


def test_plan_refuses_an_age_filter_with_op_ne(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to pass `policy validate` and then crash the SQL compiler with KeyError 'ne'.
    text = (
        "policies:\n  - name: not-30-days\n    resource: ec2\n"
        "    filters: [{type: age, of: created, days: 30, op: ne}]\n"
        "    action: stop\n    mode: approval\n"
    )
    pack = use_pack(tmp_path, monkeypatch, text)
    migrations.upgrade()
    seed_resource()
    import backend.cli.policy  # noqa: F401 - registers `policy validate`

    validated = finops("policy", "validate", str(pack))
    assert validated.exit_code != 0, validated.output
    assert "pack.yml:4: policy 'not-30-days': op 'ne' does not apply" in validated.output
    refused = finops("plan")
    assert refused.exit_code == 2, refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)
    assert "op 'ne' does not apply to an age filter" in refused.output


# -- finops actions retry (moto_server) --------------------------------------------------------


@pytest.fixture
def account(
    moto_url: str, any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Account:
    # a four-instance account: one action is 25% of the fleet, over the 10% default
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    use_pack(tmp_path, monkeypatch, execution_support.PACK)
    return seed(moto_url)


def failed_idle_action(account: Account) -> int:
    scan_and_plan()
    with session_scope() as session:
        row = session.scalars(select(ActionRow).where(ActionRow.resource_id == account.idle)).one()
        failed = {"state": "failed", "error": "Throttling: Rate exceeded"}
        session.execute(update(ActionRow).where(ActionRow.id == row.id).values(**failed))
        return row.id


def state_of(action_id: int) -> str:
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return row.state


@pytest.mark.moto_server
def test_retry_is_a_dry_run_unless_live(account: Account) -> None:
    action = failed_idle_action(account)
    dry = finops("actions", "retry", str(action))
    assert dry.exit_code == 0, dry.output
    assert "safety, on a fresh describe: allowed" in dry.output
    assert f"action {action}: would-execute dry-run: not retried" in dry.output
    assert state_of(action) == "failed"
    assert account.instance_state(account.idle) == "running"

    EmergencyStop().engage("incident", "oncall")
    stopped = finops("actions", "retry", str(action), "--live")
    assert stopped.exit_code == 1 and f"action {action}: stopped" in stopped.output
    assert account.instance_state(account.idle) == "running"
    EmergencyStop().release("admin", is_admin=True)

    live = finops("actions", "retry", str(action), "--live", "--as", "oncall")
    assert live.exit_code == 0, live.output
    assert f"action {action}: succeeded" in live.output
    assert state_of(action) == "succeeded"
    assert account.instance_state(account.idle) == "stopped"

    again = finops("actions", "retry", str(action))
    assert again.exit_code == 2 and "only a failed one can be retried" in again.output


@pytest.mark.moto_server
def test_retry_runs_live_when_dry_run_is_off(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = failed_idle_action(account)
    account.ec2().create_tags(
        Resources=[account.idle], Tags=[{"Key": "finops:opt-out", "Value": "mine"}]
    )
    monkeypatch.setenv("FINOPS_DRY_RUN", "false")
    reset_settings_cache()
    blocked = finops("actions", "retry", str(action))  # judged again: now opted out
    assert blocked.exit_code == 0, blocked.output
    assert f"action {action}: blocked" in blocked.output and "opt-out" in blocked.output
    assert state_of(action) == "failed"

    account.ec2().delete_tags(Resources=[account.idle], Tags=[{"Key": "finops:opt-out"}])
    live = finops("actions", "retry", str(action))
    assert live.exit_code == 0, live.output
    assert f"action {action}: succeeded" in live.output
    assert account.instance_state(account.idle) == "stopped"


def test_rollback_of_nothing_says_so(any_database: str) -> None:
    from backend.core.migrations import upgrade

    upgrade()
    done = finops("actions", "rollback", "--run", "999")
    assert done.exit_code == 0, done.output
    assert "nothing to roll back: no succeeded action in run 999" in done.output


# -- finops apply (moto_server) ----------------------------------------------------------------


@pytest.mark.moto_server
@pytest.mark.parametrize("hold", ["pause", "disable", "override"])
def test_apply_holds_a_policy_the_database_holds(account: Account, hold: str) -> None:
    """The files say enabled; the database says no: `apply --live` runs nothing of it."""
    scan_and_plan()
    with session_scope() as session:
        row = session.scalars(select(ActionRow).where(ActionRow.resource_id == account.idle)).one()
        action = row.id
        assert row.state == "approved"
    manager = PolicyManager()
    if hold == "pause":
        manager.pause("stop-idle", utcnow() + dt.timedelta(hours=1), "oncall", "INC-1")
    elif hold == "disable":
        manager.set_enabled("stop-idle", False, "oncall", "INC-1")
    else:
        with session_scope() as session:
            session.add(
                OverrideRow(
                    scope="policy",
                    target="stop-idle",
                    reason="INC-1",
                    created_by="oncall",
                    created_at=utcnow(),
                )
            )
    held = finops("apply", "--live")
    assert held.exit_code == 0, held.output
    assert "nothing due: held (finops policy list says why): stop-idle" in held.output
    assert account.instance_state(account.idle) == "running"
    assert state_of(action) == "approved"  # waiting, not blocked
    if hold == "pause":
        manager.resume("stop-idle", "oncall")
        ran = finops("apply", "--live")
        assert ran.exit_code == 0, ran.output
        assert account.instance_state(account.idle) == "stopped"


@pytest.mark.parametrize("command", [["actions", "list"], ["status"], ["audit", "verify"]])
def test_a_dead_database_is_named_not_a_traceback(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend.cli.audit  # noqa: F401 - registers `audit`

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    reset_settings_cache()
    result = finops(*command)
    assert result.exit_code == 3, (result.output, result.exception)
    assert "database error" in result.output and "Connection refused" in result.output


@pytest.mark.parametrize("command", [["actions", "list"], ["status"], ["demo"]])
def test_a_file_that_is_no_database_or_no_directory_is_one_line(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend.cli.demo  # noqa: F401 - registers `demo`

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{text}")
    reset_settings_cache()
    if command != ["demo"]:  # the demo never uses DATABASE_URL
        result = finops(*command)
        assert result.exit_code == 3, (result.output, result.exception)
        assert f"database error: sqlite:///{text}: file is not a database" in result.output

    monkeypatch.setenv("FINOPS_DATA_DIR", str(text / "data"))  # a directory under a file
    monkeypatch.delenv("DATABASE_URL")
    reset_settings_cache()
    result = finops(*command)
    assert result.exit_code == 3, (result.output, result.exception)
    assert f"error: cannot use {text}/data" in result.output and "Not a directory" in (
        result.output
    )


@pytest.mark.parametrize(
    "command",
    [
        ["actions", "approve", "2147483648", "--as", "abe"],
        ["policy", "pause", "gp2-to-gp3", "--until", "999999999w", "--reason", "x"],
        ["policy", "pause", "gp2-to-gp3", "--until", "9999-12-31T23:59:59-14:00", "--reason", "x"],
    ],
)
def test_values_out_of_range_are_an_error_not_a_traceback(
    any_database: str, command: list[str]
) -> None:
    import backend.cli.policy  # noqa: F401 - registers `policy`

    migrations.upgrade()
    result = finops(*command)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "error" in result.output.lower()


def test_rollback_without_usable_credentials_or_with_a_zoneless_time_is_one_line(
    any_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade()
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    no_profile = finops("actions", "rollback", "1")
    assert no_profile.exit_code == 2, (no_profile.output, no_profile.exception)
    assert "AWS credentials: The config profile (no-such-profile) could not be found" in (
        no_profile.output
    )

    monkeypatch.delenv("AWS_PROFILE")
    zoneless = finops("actions", "rollback", "--policy", "p", "--since", "2026-01-01")
    assert zoneless.exit_code == 2, (zoneless.output, zoneless.exception)
    assert "--since '2026-01-01' has no zone" in zoneless.output


def test_apply_says_why_nothing_ran(any_database: str) -> None:
    migrations.upgrade()
    later = utcnow() + dt.timedelta(days=2)
    seed_action(state="approved", approved_by="abe", not_before=later)

    nothing = finops("apply")
    assert nothing.exit_code == 0, (nothing.output, nothing.exception)
    assert (
        f"nothing due: 1 approved action(s) wait until {later:%Y-%m-%d %H:%M} UTC" in nothing.output
    )
    assert "see finops actions list --state approved" in nothing.output


def test_apply_refuses_an_unknown_or_unapproved_action_id(any_database: str) -> None:
    migrations.upgrade()
    waiting = seed_action(state="approved", approved_by="abe")
    done = seed_action(state="succeeded")

    unknown = finops("apply", "--action", "99999")
    assert unknown.exit_code == 2 and "no action 99999" in unknown.output
    finished = finops("apply", "--live", "--action", str(done), "--action", str(waiting))
    assert finished.exit_code == 2, finished.output
    assert f"not approved: {done} (succeeded)" in finished.output
    with session_scope() as session:  # nothing ran, not even the approved one named with it
        assert {r.id: r.state for r in session.scalars(select(ActionRow))} == {
            waiting: "approved",
            done: "succeeded",
        }


def test_actions_list_refuses_a_state_that_does_not_exist(any_database: str) -> None:
    migrations.upgrade()
    result = finops("actions", "list", "--state", "bogus")
    assert result.exit_code == 2
    assert "'bogus' is not one of" in result.output and "'rolled_back'" in result.output
