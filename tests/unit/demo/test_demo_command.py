"""`finops demo` runs on a database of its own, counts only its own cycle, and names an
emergency stop as the stop.

Each test runs the real demo (a small simulated fleet, moto in-process, SQLite)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner, Result

from backend.cli.demo import DEFAULT_PACK
from backend.config import get_settings, reset_settings_cache
from backend.core import migrations
from backend.core.action_engine import ActionEngine, ActionOutcome
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow
from backend.core.scan_service import ScanService
from backend.demo.cycle import CycleResult, run_cycle
from backend.demo.fleet import seed_demo_fleet
from backend.providers.aws.session import AwsClients
from tests.support.api_client import seed_action

SMALL = "10"  # instances per region: the fewest the fleet allows, for speed


def finops(*args: str, env: dict[str, str] | None = None) -> Result:
    import backend.cli.audit
    import backend.cli.demo  # noqa: F401
    from backend.cli.app import app, console, err

    console.width = err.width = 250  # no line wraps, whatever the terminal
    return CliRunner().invoke(app, list(args), env=env)


def exported(output: str) -> dict[str, str]:
    """The variables the demo says to export to explore its database."""
    line = next(x for x in output.splitlines() if x.strip().startswith("export "))
    return dict(
        (part.split("=", 1)[0], part.split("=", 1)[1].strip("'"))
        for part in line.strip().removeprefix("export ").split()
    )


def test_the_demo_never_writes_where_database_url_points_and_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.db"  # stands for the user's own (or production) database
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{mine}")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    reset_settings_cache()

    first = finops("demo", "--instances", SMALL)
    assert first.exit_code == 0, first.output
    second = finops("demo", "--instances", SMALL)
    assert second.exit_code == 0, second.output

    assert not mine.exists()
    demo_db = tmp_path / "data" / "demo" / "finops.db"
    assert f"database: sqlite:///{demo_db}  (scan 1;" in second.output  # not scan 2
    planned = [re.search(r"planned \d+ action\(s\)[^\n]*", r.output) for r in (first, second)]
    assert planned[0] and planned[1] and planned[0].group() == planned[1].group()
    count = int(re.findall(r"planned (\d+)", second.output)[0])
    with create_engine(f"sqlite:///{demo_db}").connect() as connection:
        assert connection.scalar(select(func.count()).select_from(ActionRow)) == count

    # The process's own settings are back...
    assert get_settings().effective_database_url == f"sqlite:///{mine}"
    # ...and the environment it printed reads its database, the audit chain whole.
    env = exported(second.output)
    assert env == {
        "FINOPS_DATA_DIR": str(demo_db.parent),
        "DATABASE_URL": f"sqlite:///{demo_db}",
        "REDIS_URL": "",
    }
    verified = finops("audit", "verify", env=env)
    assert verified.exit_code == 0, verified.output
    assert "audit chain OK" in verified.output


def test_the_cycle_counts_only_its_own_actions() -> None:
    """Rows the cycle did not plan (another run's, or the user's) are neither run nor counted."""
    migrations.upgrade()
    blocked = {"verdicts": [{"ok": False, "rule": "change-freeze", "reason": "frozen"}]}
    foreign = [
        seed_action(state="succeeded", estimated_monthly_savings=1000.0),
        seed_action(state="blocked", safety_verdict=blocked),
    ]

    cycle = _cycle_on_a_small_fleet()

    ours = sorted({*cycle.plan.created, *cycle.plan.blocked})
    assert not set(foreign) & set(ours)
    with session_scope() as session:
        saved = sum(
            r.estimated_monthly_savings or 0.0
            for r in session.scalars(
                select(ActionRow).where(ActionRow.id.in_(ours), ActionRow.state == "succeeded")
            )
        )
    assert saved > 0
    assert cycle.saved_per_month == pytest.approx(saved)
    assert "change-freeze" not in cycle.blocked_by_rule


def _cycle_on_a_small_fleet() -> CycleResult:
    from backend.cli.scan import load_policies

    pack = load_policies([DEFAULT_PACK])
    regions = ["us-east-1", "eu-west-1"]
    with mock_aws():

        def client(service: str, region: str) -> Any:
            return boto3.client(service, region_name=region)

        seed_demo_fleet(client, regions, instances_per_region=10)
        clients = AwsClients(endpoint_url=None)
        ScanService(get_settings(), clients=clients).run(pack=pack, regions=regions)
        return run_cycle(get_settings(), pack, clients)


def test_an_emergency_stop_engaged_during_the_demo_is_named_and_fails_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = ActionEngine.execute_one
    calls = 0

    def operator_pulls_the_brake(self: ActionEngine, *args: Any, **kwargs: Any) -> ActionOutcome:
        nonlocal calls
        calls += 1
        if calls == 3:  # two actions done, the third about to be claimed
            EmergencyStop().engage("seen something odd", "tester")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ActionEngine, "execute_one", operator_pulls_the_brake)
    result = finops("demo", "--instances", SMALL)

    assert result.exit_code == 1, result.output
    assert "blast-radius limits (EMERGENCY" not in result.output
    assert "the demo stopped early: EMERGENCY STOP ENGAGED by tester" in result.output
    assert "seen something odd" in result.output
    assert "finops resume --actor NAME --i-am-admin" in result.output
    assert "{'succeeded': 2}" in result.output
    assert "rollback: not attempted: the emergency stop is engaged" in result.output


def test_the_demo_mailbox_keeps_every_notice_away_from_the_users_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A simulated account's alerts and owner notices reach the demo's loopback mailbox,
    never the Slack, webhook or mailbox the user has configured (here, or in a .env)."""
    from backend.core.notification_settings import get_notification_settings
    from backend.demo.cycle import demo_mailbox

    user_channels = {
        "FINOPS_NOTIFY_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/real",
        "FINOPS_NOTIFY_WEBHOOK_URL": "https://pager.example.com/hook",
        "FINOPS_NOTIFY_EMAIL_TO": "oncall@example.com",
        "FINOPS_NOTIFY_SMTP_HOST": "smtp.example.com",
        "FINOPS_NOTIFY_EMAIL_FROM": "finops@example.com",
        "FINOPS_NOTIFY_CHANNELS": '[{"name": "ops", "type": "slack", "target": "https://x.example.com"}]',
        "FINOPS_NOTIFY_OWNER_ROUTES": '{"team-a": "ops"}',
    }
    for name, value in user_channels.items():
        monkeypatch.setenv(name, value)

    with demo_mailbox() as mailbox:
        inside = get_notification_settings()
    after = get_notification_settings()

    assert inside.all_channels() == [] and inside.owner_routes == {}
    assert (inside.smtp_host, inside.smtp_port) == ("127.0.0.1", mailbox.port)
    assert {c.name for c in after.all_channels()} == {"ops", "slack", "webhook", "email"}
