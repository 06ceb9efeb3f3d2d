"""What a filter may consult besides the resource itself: the clock, metrics, relations."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from backend.domain.resources import MetricValues, Resource, ResourceKind

AccountRegion = tuple[str, str]


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """Everything evaluation reads besides the resource; built once a run, never mutated.

    A relation index missing for a resource's (account, region) makes relation filters
    UNKNOWN: without the volume list we cannot tell an orphan from a live snapshot.
    """

    now: dt.datetime
    metrics: MetricValues = field(default_factory=dict)
    existing_volume_ids: Mapping[AccountRegion, Set[str]] = field(default_factory=dict)
    ami_snapshot_ids: Mapping[AccountRegion, Set[str]] = field(default_factory=dict)
    lb_healthy_targets: Mapping[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("EvaluationContext.now must be time zone aware")

    @classmethod
    def from_resources(
        cls,
        resources: Iterable[Resource],
        *,
        now: dt.datetime,
        metrics: MetricValues | None = None,
        lb_healthy_targets: Mapping[str, int | None] | None = None,
        inventoried: Iterable[AccountRegion] | None = None,
    ) -> EvaluationContext:
        """Build the relation indexes from an inventory that holds volumes and AMIs.

        `inventoried` names the (account, region) pairs whose volumes and AMIs are all in
        `resources`; it defaults to every pair seen there. A pair given here with no volume
        still gets an (empty) index, so its snapshots can be orphans.
        """
        items = list(resources)
        pairs = (
            set(inventoried)
            if inventoried is not None
            else {(r.account_id, r.region) for r in items}
        )
        volumes: dict[AccountRegion, set[str]] = {pair: set() for pair in pairs}
        ami_snapshots: dict[AccountRegion, set[str]] = {pair: set() for pair in pairs}
        for r in items:
            pair = (r.account_id, r.region)
            if pair not in pairs:
                continue
            if r.kind is ResourceKind.EBS_VOLUME and r.state != "deleted":
                volumes[pair].add(r.resource_id)
            elif r.kind is ResourceKind.AMI:
                ami_snapshots[pair].update(ami_snapshot_ids(r))
        return cls(
            now=now,
            metrics=dict(metrics or {}),
            existing_volume_ids={k: frozenset(v) for k, v in volumes.items()},
            ami_snapshot_ids={k: frozenset(v) for k, v in ami_snapshots.items()},
            lb_healthy_targets=dict(lb_healthy_targets or {}),
        )

    def with_metrics(self, metrics: MetricValues) -> EvaluationContext:
        return dataclasses.replace(self, metrics=metrics)


def ami_snapshot_ids(image: Resource) -> set[str]:
    """Snapshot ids an AMI's BlockDeviceMappings reference."""
    found: set[str] = set()
    mappings: Any = image.attributes.get("BlockDeviceMappings") or []
    if not isinstance(mappings, list | tuple):
        return found
    for mapping in mappings:
        ebs = mapping.get("Ebs") if isinstance(mapping, Mapping) else None
        snapshot = ebs.get("SnapshotId") if isinstance(ebs, Mapping) else None
        if isinstance(snapshot, str) and snapshot:
            found.add(snapshot)
    return found
