"""A scan: discover, measure, store, and (given policies) evaluate into opportunities.

Metrics are fetched per (account, region) as soon as that region is discovered, and only
for what is still undecided after the cheaper filters. Without policies, the standard
utilisation series of each kind are collected instead.

Audited: `scan` events at its start and end, and an `opportunity` event (per policy: found,
new, still open, resolved, savings). A scan changes nothing in AWS, so an audit event that
cannot be written does not undo it: what it learnt is kept, and the gap is logged as an
error, returned in `ScanOutcome.audit_errors` and kept in the run's `failures["audit-log"]`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from backend.config import Settings
from backend.core.audit_chain import EventType
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.discovery import Discoverer, Discovery, PartCallback
from backend.core.models import OpportunityRow, ScanRunRow
from backend.core.repositories import (
    RELATION_KINDS,
    MetricRepository,
    OpportunityRepository,
    ResourceRepository,
    ScanRepository,
    lock_opportunities,
)
from backend.core.scan_audit import AUDITED_ERRORS, ScanAudit, opportunity_summary
from backend.core.types import utcnow
from backend.domain.policy.evaluate import EvaluationContext, evaluate, metric_requests
from backend.domain.policy.model import PolicyPack
from backend.domain.pricing import PriceTable, estimate_savings, monthly_cost
from backend.domain.resources import KIND_METRICS, MetricSpec, Resource, ResourceKind
from backend.providers.aws.metrics import fetch_metric_summaries
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AccountTarget, AwsClients, account_targets

log = structlog.get_logger(__name__)

# Collected by a plain `finops scan` (no policies): the utilisation a FinOps engineer reads.
STANDARD_METRICS: dict[ResourceKind, tuple[tuple[str, str], ...]] = {
    ResourceKind.EC2_INSTANCE: (
        ("CPUUtilization", "Average"),
        ("CPUUtilization", "Maximum"),
        ("NetworkIn", "Sum"),
        ("NetworkOut", "Sum"),
    ),
    ResourceKind.EBS_VOLUME: (("VolumeReadOps", "Sum"), ("VolumeWriteOps", "Sum")),
    ResourceKind.LOAD_BALANCER: (("RequestCount", "Sum"),),
    ResourceKind.RDS_INSTANCE: (("DatabaseConnections", "Maximum"),),
}
# Kinds a kind's relation filters read (a snapshot is orphaned relative to the volumes).
RELATED_KINDS: dict[ResourceKind, tuple[ResourceKind, ...]] = {
    ResourceKind.EBS_SNAPSHOT: (ResourceKind.EBS_VOLUME, ResourceKind.AMI),
}


@dataclass
class Opportunity:
    policy: str
    resource: Resource
    action: str
    params: dict[str, Any]
    evidence: dict[str, Any]
    monthly_savings: float | None
    savings_unknown: str | None


@dataclass
class ScanOutcome:
    scan_id: int
    status: str  # complete | partial | failed
    discovery: Discovery
    metrics_fetched: int = 0
    metric_failures: dict[str, str] = field(default_factory=dict)
    opportunities: list[Opportunity] = field(default_factory=list)
    # (policy, resource) this scan could not decide (metrics or relations missing): their
    # open opportunities stay open, neither found again nor resolved
    undecided: list[tuple[str, Resource]] = field(default_factory=list)
    gone: int = 0
    seconds: float = 0.0
    costs: list[tuple[Resource, float | None]] = field(default_factory=list)
    unpriced: list[tuple[Resource, str]] = field(default_factory=list)
    audit_errors: list[str] = field(default_factory=list)  # audit events not written

    @property
    def selection(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for opp in self.opportunities:
            out.setdefault(opp.policy, []).append(opp.resource.resource_id)
        return {k: sorted(v) for k, v in sorted(out.items())}


def kinds_for(pack: PolicyPack | None) -> list[ResourceKind]:
    if pack is None:
        return list(ResourceKind)
    kinds: set[ResourceKind] = set()
    for policy in pack.policies:
        if policy.enabled:
            kinds.add(policy.kind)
            kinds.update(RELATED_KINDS.get(policy.kind, ()))
    return sorted(kinds, key=lambda k: list(ResourceKind).index(k))


def kinds_of_metric(spec: MetricSpec) -> list[str]:
    """The kinds whose CloudWatch namespace is the spec's (to find a resource by id)."""
    return [
        kind.value for kind, (dim, _) in KIND_METRICS.items() if dim.namespace == spec.namespace
    ]


def standard_requests(resources: Sequence[Resource], days: int) -> dict[MetricSpec, set[str]]:
    out: dict[MetricSpec, set[str]] = {}
    for r in resources:
        for metric, stat in STANDARD_METRICS.get(r.kind, ()):
            spec = MetricSpec(KIND_METRICS[r.kind][0].namespace, metric, stat, days)
            out.setdefault(spec, set()).add(r.resource_id)
    return out


class ScanService:
    def __init__(
        self,
        settings: Settings,
        *,
        clients: AwsClients | None = None,
        prices: PriceTable | None = None,
        now: Callable[[], dt.datetime] = utcnow,
        audit: AuditLogger | None = None,
    ) -> None:
        self._settings = settings
        self._clients = clients or AwsClients(endpoint_url=settings.aws_endpoint_url)
        self._prices = prices or PriceTable.shipped()
        self._now = now
        self._audit = audit or AuditLogger()

    def targets(self, accounts: Sequence[str] = ()) -> list[AccountTarget]:
        s = self._settings
        return account_targets(
            list(accounts) or s.accounts, s.role_name_for_accounts, s.cost_optimization_role_arn
        )

    def run(
        self,
        *,
        pack: PolicyPack | None = None,
        regions: Sequence[str] = (),
        accounts: Sequence[str] = (),
        on_part: PartCallback | None = None,
        on_metrics: Callable[[int], None] | None = None,
    ) -> ScanOutcome:
        started = time.perf_counter()
        regions = list(regions) or self._settings.regions
        kinds = kinds_for(pack)
        now = self._now()
        targets = self.targets(accounts)
        scope = {
            "accounts": [t.account_id or "(own credentials)" for t in targets],
            "regions": list(regions),
            "kinds": [k.value for k in kinds],
            "policies": [p.name for p in pack.enabled()] if pack is not None else None,
        }
        with session_scope() as session:
            scan = ScanRepository(session).start(accounts=list(accounts), regions=regions)
            audit = ScanAudit(self._audit, scan.id, scope, started)
            audit.write(session, EventType.SCAN, "started", scope)
        try:
            outcome = self._scan(audit, pack, regions, kinds, targets, now, on_part, on_metrics)
        except Exception as exc:
            self._abandon(audit, exc)
            raise
        outcome.seconds = time.perf_counter() - started
        outcome.audit_errors = audit.errors
        return outcome

    def _scan(
        self,
        audit: ScanAudit,
        pack: PolicyPack | None,
        regions: list[str],
        kinds: list[ResourceKind],
        targets: list[AccountTarget],
        now: dt.datetime,
        on_part: PartCallback | None,
        on_metrics: Callable[[int], None] | None,
    ) -> ScanOutcome:
        # Metrics per (account, region): resource ids are unique only within one.
        metrics: dict[tuple[str, str], dict[tuple[str, MetricSpec], float | None]] = {}
        metric_failures: dict[str, str] = {}
        lock = threading.Lock()

        def measure(
            target: AccountTarget, account: str, region: str, resources: list[Resource]
        ) -> None:
            if pack is None:
                wanted = standard_requests(resources, self._settings.metrics_window_days)
            else:
                ctx = EvaluationContext.from_resources(resources, now=now)
                wanted = metric_requests(pack, resources, ctx)
            by_id = {r.resource_id: r for r in resources}
            pairs = [(by_id[rid], spec) for spec, ids in wanted.items() for rid in sorted(ids)]
            if not pairs:
                return
            try:
                found = fetch_metric_summaries(
                    self._clients.client(target, "cloudwatch", region), pairs, now=now
                )
            except Exception as exc:  # noqa: BLE001 - the region's metrics stay unknown
                with lock:
                    metric_failures[f"{account}/{region}/cloudwatch"] = describe_error(exc)
                return
            with lock:
                metrics[(account, region)] = found
            if on_metrics:
                on_metrics(len(found))

        discovery = Discoverer(self._clients, concurrency=self._settings.scan_concurrency).run(
            targets, regions, kinds, on_region=measure, on_part=on_part
        )
        outcome = ScanOutcome(
            scan_id=audit.scan_id,
            status="complete",
            discovery=discovery,
            metrics_fetched=sum(len(m) for m in metrics.values()),
            metric_failures=metric_failures,
        )
        if pack is not None:
            outcome.opportunities = self._evaluate(pack, discovery, metrics, now, outcome.undecided)
        for resource in discovery.resources:
            cost = monthly_cost(resource, self._prices)
            outcome.costs.append((resource, cost.monthly_usd))
            if cost.unknown:
                outcome.unpriced.append((resource, cost.unknown))
        self._store(outcome, metrics, pack, now, audit)
        return outcome

    def _abandon(self, audit: ScanAudit, exc: Exception) -> None:
        """A scan that raised: its run is marked failed and audited, as far as that works."""
        error = describe_error(exc)
        try:
            with session_scope() as session:
                scan = session.get(ScanRunRow, audit.scan_id)
                if scan is not None and scan.status == "running":
                    scan.status, scan.finished_at = "failed", self._now()
                    scan.failures = {**(scan.failures or {}), "scan": error}
                details = {**audit.scope, "error": error, "seconds": audit.seconds()}
                audit.write(session, EventType.SCAN, "failed", details)
        except Exception as again:  # noqa: BLE001 - the scan's own error is the one raised
            log.error("failed scan not recorded", scan=audit.scan_id, error=describe_error(again))

    def _evaluate(
        self,
        pack: PolicyPack,
        discovery: Discovery,
        metrics: dict[tuple[str, str], dict[tuple[str, MetricSpec], float | None]],
        now: dt.datetime,
        undecided: list[tuple[str, Resource]],
    ) -> list[Opportunity]:
        """Evaluate each (account, region) on its own metrics and relation indexes.

        Relations (orphaned snapshot, snapshot behind an AMI) are known only where both the
        volumes and the AMIs of that region were seen whole; elsewhere they stay UNKNOWN.
        """
        complete = set(discovery.complete_parts)
        groups: dict[tuple[str, str], list[Resource]] = {}
        for resource in discovery.resources:
            groups.setdefault((resource.account_id, resource.region), []).append(resource)
        found: list[Opportunity] = []
        for (account, region), resources in sorted(groups.items()):
            relations_known = all((account, region, kind) in complete for kind in RELATION_KINDS)
            ctx = EvaluationContext.from_resources(
                resources,
                now=now,
                metrics=metrics.get((account, region), {}),
                inventoried=[(account, region)] if relations_known else [],
            )
            found.extend(
                self._price(
                    m.policy.name,
                    m.policy.action.name,
                    dict(m.policy.action.params),
                    m.resource,
                    m.evidence,
                )
                for m in evaluate(pack, resources, ctx, undecided)
            )
        return found

    def _price(
        self,
        policy: str,
        action: str,
        params: dict[str, Any],
        resource: Resource,
        evidence: dict[str, Any],
    ) -> Opportunity:
        # A rightsizing estimate reads the CPU the policy measured, when it measured it.
        cpu = next(
            (
                v
                for k, v in evidence.items()
                if k.startswith("metric.CPUUtilization.Average.") and isinstance(v, float)
            ),
            None,
        )
        savings = estimate_savings(
            action,
            resource,
            self._prices,
            params if cpu is None else {**params, "cpu_average": cpu},
        )
        return Opportunity(
            policy, resource, action, params, evidence, savings.monthly_usd, savings.unknown
        )

    def _store(
        self,
        outcome: ScanOutcome,
        metrics: dict[tuple[str, str], dict[tuple[str, MetricSpec], float | None]],
        pack: PolicyPack | None,
        now: dt.datetime,
        audit: ScanAudit,
    ) -> None:
        discovery = outcome.discovery
        failed_any = bool(discovery.failures or outcome.metric_failures)
        outcome.status = (
            "failed"
            if failed_any and not discovery.complete_parts
            else "partial"
            if failed_any
            else "complete"
        )
        with session_scope() as session:
            resources = ResourceRepository(session)
            unknown = {r.key: why for r, why in outcome.unpriced}
            cost_by_key = {r.key: (c, unknown.get(r.key)) for r, c in outcome.costs}
            resources.upsert_many(
                discovery.resources,
                scan_id=outcome.scan_id,
                seen_at=now,
                cost=lambda r: cost_by_key[r.key],
            )
            # Only a part seen whole may declare anything gone (a failed one says nothing).
            outcome.gone = sum(
                resources.mark_gone(part, scan_id=outcome.scan_id, at=now)
                for part in discovery.complete_parts
            )
            resources.mark_complete(discovery.complete_parts, scan_id=outcome.scan_id, at=now)
            keys = resources.primary_keys(outcome.scan_id)
            MetricRepository(session).upsert_many(
                (
                    (keys[(account, region, kind, rid)], spec, value)
                    for (account, region), found in metrics.items()
                    for (rid, spec), value in found.items()
                    for kind in kinds_of_metric(spec)
                    if (account, region, kind, rid) in keys
                ),
                at=now,
            )
            if pack is not None:
                policies = [p.name for p in pack.policies if p.enabled]
                # Locked before the read below (no other writer until commit) and before the
                # audit events (the order every writer of opportunities keeps).
                lock_opportunities(session)
                # What was open before this scan, to tell new findings from known ones.
                was_open = {
                    (name, pk)
                    for name, pk in session.execute(
                        select(OpportunityRow.policy_name, OpportunityRow.resource_pk).where(
                            OpportunityRow.status == "open",
                            OpportunityRow.policy_name.in_(policies),
                        )
                    )
                }
                found = [
                    {
                        "policy_name": o.policy,
                        "resource_pk": keys[o.resource.key],
                        "action": o.action,
                        "params": o.params,
                        "evidence": o.evidence,
                        "estimated_monthly_savings": o.monthly_savings,
                        "savings_unknown": o.savings_unknown,
                    }
                    for o in outcome.opportunities
                ]
                OpportunityRepository(session).record(
                    found,
                    policies=policies,
                    at=now,
                    scan_id=outcome.scan_id,
                    undecided={(name, keys[r.key]) for name, r in outcome.undecided},
                )
                summary = opportunity_summary(session, policies, now, found, was_open)
                audit.write(session, EventType.OPPORTUNITY, "found", summary)
            scan = session.get(ScanRunRow, outcome.scan_id)
            assert scan is not None
            scan.status = outcome.status
            scan.finished_at = self._now()
            scan.failures = {**discovery.failures, **outcome.metric_failures}
            scan.counts = {
                "resources": len(discovery.resources),
                "gone": outcome.gone,
                "metrics": len(metrics),
                "opportunities": len(outcome.opportunities),
            }
            errors = sorted(scan.failures.items())
            finished = {
                **audit.scope,
                **scan.counts,
                "errors": dict(errors[:AUDITED_ERRORS]),
                "error_count": len(errors),
                "seconds": audit.seconds(),
            }
            audit.write(session, EventType.SCAN, outcome.status, finished)
            if audit.errors:  # the run says its audit trail has a gap
                scan.failures = {**scan.failures, "audit-log": "; ".join(audit.errors)}
