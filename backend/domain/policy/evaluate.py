"""Run a pack over an inventory: first what metrics are worth fetching, then the matches.

Both walk the resources once, grouped by kind, and only enabled policies. A resource is
selected only when its filters are TRUE; UNKNOWN (data missing) never selects.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.policy.truth import Truth
from backend.domain.resources import MetricSpec, Resource, ResourceKind

__all__ = ["EvaluationContext", "Match", "evaluate", "metric_requests"]


@dataclass(frozen=True, slots=True)
class Match:
    """A resource a policy selects, with the facts that made it match."""

    policy: Policy
    resource: Resource
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)


def _by_kind(resources: Iterable[Resource]) -> dict[ResourceKind, list[Resource]]:
    groups: dict[ResourceKind, list[Resource]] = defaultdict(list)
    for resource in resources:
        groups[resource.kind].append(resource)
    return groups


def _policies_by_kind(pack: PolicyPack) -> dict[ResourceKind, list[Policy]]:
    groups: dict[ResourceKind, list[Policy]] = defaultdict(list)
    for policy in pack.enabled():
        groups[policy.kind].append(policy)
    return groups


def metric_requests(
    pack: PolicyPack, resources: Sequence[Resource], ctx: EvaluationContext
) -> dict[MetricSpec, set[str]]:
    """The metric summaries worth fetching: spec -> ids of the resources that need it.

    Each policy is evaluated with the metrics `ctx` already has (none, usually); only a
    resource still UNKNOWN asks for the specs that could settle it, so a resource that
    fails a cheap filter costs no CloudWatch query, and a spec wanted by many policies is
    asked for once a resource.
    """
    wanted: dict[MetricSpec, set[str]] = defaultdict(set)
    policies = _policies_by_kind(pack)
    for kind, group in _by_kind(resources).items():
        metered = [p for p in policies.get(kind, ()) if p.metric_specs]
        for resource in group:
            for policy in metered:
                truth, specs = policy.filters.pending(resource, ctx)
                if truth is Truth.UNKNOWN:
                    for spec in specs:
                        wanted[spec].add(resource.resource_id)
    return dict(wanted)


def evaluate(
    pack: PolicyPack,
    resources: Sequence[Resource],
    ctx: EvaluationContext,
    undecided: list[tuple[str, Resource]] | None = None,
) -> list[Match]:
    """Every (policy, resource) whose filters are TRUE, in pack order then inventory order;
    those that came out UNKNOWN (missing metrics or relations) are added to `undecided`."""
    policies = _policies_by_kind(pack)
    found: dict[str, list[Match]] = {p.name: [] for p in pack.enabled()}
    for kind, group in _by_kind(resources).items():
        for policy in policies.get(kind, ()):
            matches = found[policy.name]
            for resource in group:
                evidence: dict[str, Any] = {}
                truth = policy.filters.evaluate(resource, ctx, evidence)
                if truth is Truth.TRUE:
                    matches.append(Match(policy, resource, evidence))
                elif truth is Truth.UNKNOWN and undecided is not None:
                    undecided.append((policy.name, resource))
    return [m for name in found for m in found[name]]
