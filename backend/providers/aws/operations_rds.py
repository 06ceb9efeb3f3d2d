"""RDS instances: stop and start (AWS starts a stopped database again after 7 days)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations_base import (
    BaseOperation,
    OperationContext,
    Params,
    act,
    fresh,
    settle,
    undo_needs,
)
from backend.providers.aws.retry import error_code

RDS = ResourceKind.RDS_INSTANCE
_STOPPING = frozenset({"stopped", "stopping"})
_STARTING = frozenset({"available", "starting"})
# right after the call AWS may still report the old state for a moment
_WHILE_STOPPING = frozenset({"stopping", "available"})
_WHILE_STARTING = frozenset(
    {
        "starting",
        "stopped",
        "configuring-enhanced-monitoring",
        "configuring-iam-database-auth",
        "configuring-log-exports",
        "backing-up",
        "modifying",
    }
)


def _change(ctx: OperationContext, db_id: str, operation: str, done: frozenset[str]) -> None:
    """Stop or start unless already on the way; InvalidDBInstanceState from a race is fine
    when the database turns out to be on the way after all."""
    if fresh(ctx, RDS, db_id).state in done:
        return
    try:
        act(ctx, "rds", operation, DBInstanceIdentifier=db_id)
    except ClientError as exc:
        if error_code(exc) != "InvalidDBInstanceState" or fresh(ctx, RDS, db_id).state not in done:
            raise


def stop_db(ctx: OperationContext, db_id: str) -> None:
    _change(ctx, db_id, "stop_db_instance", _STOPPING)


def start_db(ctx: OperationContext, db_id: str) -> None:
    _change(ctx, db_id, "start_db_instance", _STARTING)


def stopped_db(ctx: OperationContext, db_id: str) -> Resource:
    return settle(ctx, RDS, db_id, frozenset({"stopped"}), _WHILE_STOPPING)


def available_db(ctx: OperationContext, db_id: str) -> Resource:
    return settle(ctx, RDS, db_id, frozenset({"available"}), _WHILE_STARTING)


class StopDatabase(BaseOperation):
    action = "stop"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        stop_db(ctx, resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        return stopped_db(ctx, resource_id)

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        with undo_needs(RDS, pre_state.resource_id):
            start_db(ctx, pre_state.resource_id)
            available_db(ctx, pre_state.resource_id)
        return f"started database {pre_state.resource_id}"


class StartDatabase(BaseOperation):
    action = "start"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        start_db(ctx, resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        return available_db(ctx, resource_id)

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        with undo_needs(RDS, pre_state.resource_id):
            stop_db(ctx, pre_state.resource_id)
            stopped_db(ctx, pre_state.resource_id)
        return f"stopped database {pre_state.resource_id}"
