"""Discover: one describe per (account, region, kind), concurrently, failures kept per part.

A part that fails is reported and its resources are not touched; only the parts that were
seen completely may mark anything gone. When every kind of one (account, region) is done,
`on_region` is called with its resources (so metrics for it can start while others describe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import DESCRIBERS
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AccountTarget, AwsClients

log = structlog.get_logger(__name__)

PartKey = tuple[str, str, str]  # (account, region, kind)
RegionCallback = Callable[[AccountTarget, str, str, list[Resource]], None]
PartCallback = Callable[[PartKey, int, str | None], None]


@dataclass
class Discovery:
    resources: list[Resource] = field(default_factory=list)
    complete_parts: list[PartKey] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # "account/region/kind" -> error
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failures


def part_label(account: str, region: str, kind: str) -> str:
    return f"{account}/{region}/{kind}"


class Discoverer:
    def __init__(self, clients: AwsClients, *, concurrency: int = 8) -> None:
        self._clients = clients
        self._concurrency = concurrency

    def resolve_accounts(
        self, targets: Sequence[AccountTarget], failures: dict[str, str]
    ) -> list[tuple[AccountTarget, str]]:
        """Each target with its account id; a target we cannot identify is a failure."""
        resolved = []
        for target in targets:
            try:
                caller = self._clients.caller_account() if target.role_arn is None else None
            except Exception as exc:  # noqa: BLE001 - reported per account, scan goes on
                who = target.account_id or "the default credentials' account"
                failures[part_label(who, "*", "*")] = (
                    f"cannot tell which account the credentials are for (STS "
                    f"GetCallerIdentity): {describe_error(exc)}"
                    if target.account_id is None
                    else describe_error(exc)
                )
                continue
            if target.role_arn is None and target.account_id not in (None, caller):
                failures[part_label(str(target.account_id), "*", "*")] = (
                    f"no role to assume in account {target.account_id} (credentials are for "
                    f"{caller}); set FINOPS_ROLE_NAME or COST_OPTIMIZATION_ROLE_ARN"
                )
                continue
            resolved.append((target, target.account_id or str(caller)))
        return resolved

    def run(
        self,
        targets: Sequence[AccountTarget],
        regions: Sequence[str],
        kinds: Sequence[ResourceKind],
        *,
        on_region: RegionCallback | None = None,
        on_part: PartCallback | None = None,
    ) -> Discovery:
        started = time.perf_counter()
        out = Discovery()
        accounts = self.resolve_accounts(targets, out.failures)
        lock = threading.Lock()
        pending: dict[tuple[str, str], int] = {}
        by_region: dict[tuple[str, str], list[Resource]] = {}
        followups: list[Future[None]] = []
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="discover") as pool:

            def describe(
                target: AccountTarget, account: str, region: str, kind: ResourceKind
            ) -> None:
                label = part_label(account, region, kind.value)
                found: list[Resource] = []
                error: str | None = None
                try:
                    found = DESCRIBERS[kind](
                        lambda service: self._clients.client(target, service, region),
                        account,
                        region,
                    )
                except Exception as exc:  # noqa: BLE001 - one part's failure is reported
                    error = describe_error(exc)
                    log.warning("discovery part failed", part=label, error=error)
                with lock:
                    if error is None:
                        out.resources.extend(found)
                        out.complete_parts.append((account, region, kind.value))
                        by_region.setdefault((account, region), []).extend(found)
                    else:
                        out.failures[label] = error
                    pending[(account, region)] -= 1
                    region_done = pending[(account, region)] == 0
                    region_resources = by_region.get((account, region), [])
                if on_part:
                    on_part((account, region, kind.value), len(found), error)
                if region_done and on_region:
                    followups.append(
                        pool.submit(on_region, target, account, region, region_resources)
                    )

            futures = []
            for target, account in accounts:
                for region in regions:
                    pending[(account, region)] = len(kinds)
                    for kind in kinds:
                        futures.append(pool.submit(describe, target, account, region, kind))
            for future in futures:
                future.result()
            for followup in list(followups):
                followup.result()
        out.seconds = time.perf_counter() - started
        return out
