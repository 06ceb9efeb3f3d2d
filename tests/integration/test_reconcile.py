"""The reconciler settles an action whose worker died mid-change only from what it read.

In-process moto; errors are raised before the call reaches moto. An account that cannot be
read says nothing about the change: the action stays executing for the next tick. A read
that shows the resource not in the intended state fails it; one that shows it there
succeeds it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from backend.config import get_settings, reset_settings_cache
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.scan_service import ScanService
from backend.providers.aws.breakers import BreakerKey, CircuitOpenError
from backend.providers.aws.session import AwsClients
from backend.runtime.reconcile import reconcile
from backend.runtime.services import WorkerServices
from tests.integration.aws_fleet import launch

PACK = """
policies:
  - name: stop-idle
    resource: ec2
    filters: [{"tag:role": idle}]
    action: stop
    mode: approval
    notice: {notify: false}
"""


class Unreadable:
    """While `error` is set, every DescribeInstances raises it instead of reaching moto."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.session = boto3.session.Session()
        self.session.events.register("before-call.ec2.DescribeInstances", self._before)

    def _before(self, **_: Any) -> None:
        if self.error is not None:
            raise self.error


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Unreadable]:
    (tmp_path / "pack.yml").write_text(PACK)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(tmp_path / "pack.yml"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'reconcile.sqlite'}")
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    reset_settings_cache()
    with mock_aws():
        upgrade()
        yield Unreadable()
    reset_settings_cache()


def stuck_action(account: Unreadable) -> tuple[int, str]:
    """A stop whose worker died after recording the pre-state: the change may have run."""
    instance = launch(boto3.client("ec2", region_name="us-east-1"), {"role": "idle"})
    pack = WorkerServices(get_settings()).pack()
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    with session_scope() as session:
        ActionPlanner().plan(session, pack, requested_by="t")
        action_id = session.scalars(select(ActionRow.id)).one()
        session.execute(
            update(ActionRow)
            .where(ActionRow.id == action_id)
            .values(
                state="executing",
                pre_state={"state": "running"},
                deadline=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
                claimed_by="dead-worker",
            )
        )
    return action_id, instance


def services(account: Unreadable) -> WorkerServices:
    svc = WorkerServices(get_settings())
    svc.clients = AwsClients(base_session=account.session)
    return svc


def row(action_id: int) -> ActionRow:
    with session_scope() as session:
        found = session.get(ActionRow, action_id)
        assert found is not None
        session.expunge(found)
        return found


def _client_error(code: str, status: int = 400) -> ClientError:
    answer: Any = {
        "Error": {"Code": code, "Message": f"injected {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, "DescribeInstances")


UNREADABLE = {
    "throttled": _client_error("RequestLimitExceeded", 503),
    "access denied": _client_error("UnauthorizedOperation", 403),
    "expired token": _client_error("ExpiredToken"),
    "breaker open": CircuitOpenError(BreakerKey("123456789012", "us-east-1", "ec2"), None, "t"),
    "no connection": EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com"),
}


@pytest.mark.parametrize("why", list(UNREADABLE))
def test_an_unreadable_account_leaves_the_action_for_the_next_tick(
    account: Unreadable, why: str
) -> None:
    action_id, instance = stuck_action(account)
    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[instance])
    svc = services(account)
    account.error = UNREADABLE[why]

    assert reconcile(svc, action_id) == "executing"
    left = row(action_id)
    assert (left.state, left.error, left.claimed_by) == ("executing", None, "dead-worker")

    account.error = None  # readable again: the next tick finds the change made
    assert reconcile(svc, action_id) == "succeeded"


def test_a_read_that_shows_no_change_fails_the_action(account: Unreadable) -> None:
    action_id, _ = stuck_action(account)  # the instance still runs
    assert reconcile(services(account), action_id) == "failed"
    error = row(action_id).error or ""
    assert "the account does not show the change" in error and "running" in error


def cli(*args: str) -> Result:
    import backend.cli.actions  # noqa: F401 - registers the `actions` commands
    from backend.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_cli_reconcile_settles_what_a_dead_process_left_executing(account: Unreadable) -> None:
    """Without the distributed runtime (embedded, `finops apply`), nothing else settles an
    action whose process died after its AWS call: it stayed executing, refused by both
    retry and rollback."""
    action_id, instance = stuck_action(account)
    boto3.client("ec2", region_name="us-east-1").stop_instances(InstanceIds=[instance])
    result = cli("actions", "reconcile")
    assert result.exit_code == 0, result.output
    assert f"action {action_id}: succeeded" in result.output
    assert row(action_id).state == "succeeded"
    assert "nothing to reconcile" in cli("actions", "reconcile").output


def test_cli_reconcile_leaves_an_action_its_process_may_still_be_running(
    account: Unreadable,
) -> None:
    action_id, _ = stuck_action(account)
    with session_scope() as session:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        session.execute(update(ActionRow).where(ActionRow.id == action_id).values(deadline=later))
    result = cli("actions", "reconcile", str(action_id))
    assert result.exit_code == 0, result.output
    assert f"action {action_id}: left alone: not executing past its deadline" in result.output
    assert row(action_id).state == "executing"
