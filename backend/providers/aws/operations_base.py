"""What every AWS operation shares: its context, its errors, fresh describes, guarded calls.

An operation is one (action, kind): describe, backup, execute, verify, undo. Each step is
idempotent on its own because the engine may run any of them twice (a redelivered task, a
worker that died after the AWS call but before recording it). AWS client tokens help where an
API takes one, but moto ignores them, so every create is also found again by a tag derived
from our idempotency key before it is made.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from botocore.exceptions import ClientError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import DESCRIBERS
from backend.providers.aws.retry import THROTTLING_CODES, call, error_code

T = TypeVar("T")
Params = Mapping[str, Any]

KEY_TAG = "finops:idempotency-key"
SOURCE_VOLUME_TAG = "finops:source-volume"
SOURCE_INSTANCE_TAG = "finops:source-instance"
RESTORED_FROM_TAG = "finops:restored-from"

# Decided by error code only: moto's messages name ids in odd forms.
NOT_FOUND_CODES = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidVolume.NotFound",
        "InvalidSnapshot.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidAMIID.Unavailable",
        "InvalidAllocationID.NotFound",
        "InvalidAddress.NotFound",
        "LoadBalancerNotFound",
        "TargetGroupNotFound",
        "DBInstanceNotFound",
        "DBInstanceNotFoundFault",
    }
)


class ResourceGone(Exception):  # noqa: N818 - the names the engine catches
    """The resource no longer exists."""

    def __init__(self, kind: ResourceKind, resource_id: str) -> None:
        super().__init__(f"{kind.value} {resource_id} no longer exists")
        self.kind = kind
        self.resource_id = resource_id


class VerificationFailed(Exception):  # noqa: N818 - the names the engine catches
    """The post-state is not what the action should have left."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class CannotUndo(Exception):  # noqa: N818 - the names the engine catches
    """The inverse cannot be applied (no backup, backup gone, AWS refuses)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class BackupFailed(Exception):  # noqa: N818 - the names the engine catches
    """A snapshot or image did not become usable; the destructive step must not run."""


class WaitTimeoutError(Exception):
    pass


@dataclass(frozen=True)
class OperationContext:
    client_for: Callable[[str], Any]  # service -> boto3 client for this account+region
    account_id: str
    region: str
    idempotency_key: str  # ours: ClientToken where the API takes one, and the finops tag
    # Called with "service:Operation" before every changing AWS call; raising stops the step
    # (the emergency stop is checked before every AWS call, not only before the claim).
    guard: Callable[[str], None] | None = None
    # Called with "service:Operation" once AWS has answered a changing call with success.
    made: Callable[[str], None] | None = None
    wait_timeout: float = 1800.0  # AMIs of big instances take a while on AWS
    poll_interval: float = 5.0
    # For an undo: the resource as the action left it (its recorded post-state), to tell
    # what the action did from what someone changed since.
    left_as: Resource | None = None


class Operation(Protocol):
    action: str
    kind: ResourceKind

    def describe(self, ctx: OperationContext, resource_id: str) -> Resource: ...

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None: ...

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None: ...

    def verify(
        self, ctx: OperationContext, resource_id: str, params: Params
    ) -> Resource | None: ...

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str: ...


def is_gone(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


# --- fresh describes through describe.py, so the shape equals what the inventory stores ---

_PAGE_SIZE_ARGS = ("MaxResults", "PageSize", "MaxRecords")


def _narrowing(kind: ResourceKind, rid: str) -> tuple[str, str, dict[str, Any]]:
    """(service, describe operation, arguments that ask for this one resource)."""
    if kind is ResourceKind.EC2_INSTANCE:
        return "ec2", "describe_instances", {"InstanceIds": [rid]}
    if kind is ResourceKind.EBS_VOLUME:
        return "ec2", "describe_volumes", {"VolumeIds": [rid]}
    if kind is ResourceKind.EBS_SNAPSHOT:
        return "ec2", "describe_snapshots", {"SnapshotIds": [rid]}
    if kind is ResourceKind.AMI:
        return "ec2", "describe_images", {"ImageIds": [rid]}
    if kind is ResourceKind.ELASTIC_IP:
        by = "AllocationIds" if rid.startswith("eipalloc-") else "PublicIps"
        return "ec2", "describe_addresses", {by: [rid]}
    if kind is ResourceKind.LOAD_BALANCER:
        return "elbv2", "describe_load_balancers", {"LoadBalancerArns": [rid]}
    return "rds", "describe_db_instances", {"DBInstanceIdentifier": rid}


class _OneResourceClient:
    """A client whose describe call for one kind asks for one id (AWS refuses page sizes
    together with id lists); every other call passes through."""

    def __init__(self, client: Any, operation: str, narrow: dict[str, Any]) -> None:
        self._client = client
        self._operation = operation
        self._narrow = narrow

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name != self._operation:
            return method

        def narrowed(**kwargs: Any) -> Any:
            kept = {k: v for k, v in kwargs.items() if k not in _PAGE_SIZE_ARGS}
            return method(**kept, **self._narrow)

        return narrowed


def fresh(ctx: OperationContext, kind: ResourceKind, resource_id: str) -> Resource:
    """The resource as AWS sees it now, normalised exactly like the inventory's scan."""
    service, operation, narrow = _narrowing(kind, resource_id)

    def client_for(name: str) -> Any:
        client = ctx.client_for(name)
        return _OneResourceClient(client, operation, narrow) if name == service else client

    try:
        found = DESCRIBERS[kind](client_for, ctx.account_id, ctx.region)
    except ClientError as exc:
        if is_gone(exc):
            raise ResourceGone(kind, resource_id) from exc
        raise
    # describe.py drops terminated instances and other accounts' snapshots: gone for us
    for resource in found:
        if resource.resource_id == resource_id:
            return resource
    raise ResourceGone(kind, resource_id)


def fresh_or_none(ctx: OperationContext, kind: ResourceKind, resource_id: str) -> Resource | None:
    try:
        return fresh(ctx, kind, resource_id)
    except ResourceGone:
        return None


# --- calls that change something ---


def act(ctx: OperationContext, service: str, operation: str, /, **kwargs: Any) -> Any:
    """A changing call that is safe to repeat (stop, delete, tag): full retries."""
    _check_guard(ctx, service, operation)
    answer = call(getattr(ctx.client_for(service), operation), **kwargs)
    _note_made(ctx, service, operation)
    return answer


def remove(ctx: OperationContext, service: str, operation: str, /, **kwargs: Any) -> None:
    """A delete (or release, or terminate) is done when AWS says the thing is not there."""
    try:
        act(ctx, service, operation, **kwargs)
    except ClientError as exc:
        if not is_gone(exc):
            raise


def create(ctx: OperationContext, service: str, operation: str, /, **kwargs: Any) -> Any:
    """A call that makes something new: retried only when AWS throttled it (the request was
    refused, so nothing was made). After a dropped connection the step fails, and its retry
    finds what was made by the idempotency tag instead of making a second one."""
    _check_guard(ctx, service, operation)
    method = getattr(ctx.client_for(service), operation)
    throttled_only = retry(
        retry=retry_if_exception(lambda e: error_code(e) in THROTTLING_CODES),
        stop=stop_after_attempt(5),
        wait=wait_random_exponential(multiplier=0.2, max=8.0),
        reraise=True,
    )
    answer = throttled_only(method)(**kwargs)
    _note_made(ctx, service, operation)
    return answer


def read(ctx: OperationContext, service: str, operation: str, /, **kwargs: Any) -> Any:
    return call(getattr(ctx.client_for(service), operation), **kwargs)


def _check_guard(ctx: OperationContext, service: str, operation: str) -> None:
    if ctx.guard is not None:
        ctx.guard(f"{service}:{operation}")


def _note_made(ctx: OperationContext, service: str, operation: str) -> None:
    if ctx.made is not None:
        ctx.made(f"{service}:{operation}")


# --- waiting ---


def wait_until(ctx: OperationContext, what: str, check: Callable[[], T | None]) -> T:
    """Poll `check` until it returns a value; the first look is immediate (moto is)."""
    deadline = time.monotonic() + ctx.wait_timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"timed out after {ctx.wait_timeout:.0f}s waiting for {what}")
        time.sleep(ctx.poll_interval)


def settle(
    ctx: OperationContext,
    kind: ResourceKind,
    resource_id: str,
    target: frozenset[str],
    passing: frozenset[str],
) -> Resource:
    """Wait while the state is in `passing`; the post-state, or VerificationFailed."""

    def check() -> Resource | None:
        now = fresh_or_none(ctx, kind, resource_id)
        if now is None:
            raise VerificationFailed(f"{kind.value} {resource_id} no longer exists")
        if now.state in target:
            return now
        if now.state in passing:
            return None
        wanted = " or ".join(sorted(target))
        raise VerificationFailed(f"{kind.value} {resource_id} is {now.state}, expected {wanted}")

    try:
        return wait_until(ctx, f"{kind.value} {resource_id}", check)
    except WaitTimeoutError as exc:
        raise VerificationFailed(str(exc)) from exc


def await_gone(
    ctx: OperationContext, kind: ResourceKind, resource_id: str, passing: str = ""
) -> None:
    """Verify a deletion: gone, or still `passing` (deleting, shutting-down) until it is."""

    def check() -> bool | None:
        now = fresh_or_none(ctx, kind, resource_id)
        if now is None:
            return True
        if passing and now.state == passing:
            return None
        raise VerificationFailed(f"{kind.value} {resource_id} still exists ({now.state})")

    try:
        wait_until(ctx, f"{kind.value} {resource_id} to go", check)
    except WaitTimeoutError as exc:
        raise VerificationFailed(str(exc)) from exc


# --- keys, tokens, tags ---


def key_value(ctx: OperationContext, purpose: str = "") -> str:
    """The idempotency tag value of one step (tag values hold at most 256 characters)."""
    value = f"{ctx.idempotency_key}:{purpose}" if purpose else ctx.idempotency_key
    return value if len(value) <= 256 else hashlib.sha256(value.encode()).hexdigest()


def client_token(ctx: OperationContext, purpose: str) -> str:
    """A ClientToken (at most 64 ASCII characters) for one step of this action."""
    return hashlib.sha256(f"{ctx.idempotency_key}:{purpose}".encode()).hexdigest()[:64]


def short_digest(ctx: OperationContext, purpose: str = "") -> str:
    return hashlib.sha256(f"{ctx.idempotency_key}:{purpose}".encode()).hexdigest()[:12]


def user_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags we may write back: AWS reserves the aws: prefix."""
    return {k: v for k, v in tags.items() if not k.lower().startswith("aws:")}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_specs(resource_type: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource_type, "Tags": tag_list(tags)}] if tags else []


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]


def require_param(params: Params, name: str, action: str) -> Any:
    value = params.get(name)
    if value is None:
        raise ValueError(f"{action} needs the parameter {name!r}")
    return value


@contextmanager
def undo_needs(kind: ResourceKind, resource_id: str) -> Iterator[None]:
    """An inverse applied to a resource that is gone cannot be applied."""
    try:
        yield
    except ResourceGone as exc:
        raise CannotUndo(f"{kind.value} {resource_id} no longer exists") from exc


@contextmanager
def making_from(kind: ResourceKind, resource_id: str) -> Iterator[None]:
    """A backup of a resource that is gone is ResourceGone, decided by the error code."""
    try:
        yield
    except ClientError as exc:
        if is_gone(exc):
            raise ResourceGone(kind, resource_id) from exc
        raise


class BaseOperation:
    """Defaults: fresh describe, no backup, no inverse."""

    action: str = ""

    def __init__(self, kind: ResourceKind) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.action!r}, {self.kind.value!r})"

    def describe(self, ctx: OperationContext, resource_id: str) -> Resource:
        return fresh(ctx, self.kind, resource_id)

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        raise CannotUndo(f"{self.action} on {self.kind.value} has no inverse")
