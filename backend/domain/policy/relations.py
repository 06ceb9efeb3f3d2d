"""Filters on a resource's relations to others: attachments, source volumes, AMIs, targets.

Written as plain words in a filter list (`- unattached`) or as `{type: unattached}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.filters import Evidence, Filter, ParseContext, note, register_filter
from backend.domain.policy.spec import Fields
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind


class Relation(Filter):
    """A parameterless relation filter."""

    __slots__ = ()
    bare = True

    @classmethod
    def from_spec(cls, spec: Fields, pc: ParseContext) -> Filter | None:
        return cls()


@register_filter("unattached")
@dataclass(frozen=True, slots=True)
class Unattached(Relation):
    """An EBS volume in state `available` with no attachment."""

    kinds = frozenset({ResourceKind.EBS_VOLUME})

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        attachments = resource.attributes.get("Attachments") or ()
        note(evidence, "unattached.state", resource.state)
        note(evidence, "unattached.attachments", len(attachments))
        return Truth.of(resource.state == "available" and not attachments)


@register_filter("orphaned")
@dataclass(frozen=True, slots=True)
class Orphaned(Relation):
    """A snapshot whose source volume no longer exists in its account and region."""

    kinds = frozenset({ResourceKind.EBS_SNAPSHOT})

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        volumes = ctx.existing_volume_ids.get((resource.account_id, resource.region))
        volume_id = resource.attributes.get("VolumeId")
        note(evidence, "orphaned.VolumeId", volume_id)
        if volumes is None:
            return Truth.UNKNOWN  # volumes of that region not inventoried
        if not isinstance(volume_id, str) or not volume_id:
            note(evidence, "orphaned.why", "snapshot names no source volume")
            return Truth.FALSE
        return Truth.of(volume_id not in volumes)


@register_filter("backs-ami")
@dataclass(frozen=True, slots=True)
class BacksAmi(Relation):
    """A snapshot that an AMI's block device mappings reference: deleting it breaks the AMI."""

    kinds = frozenset({ResourceKind.EBS_SNAPSHOT})

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        snapshots = ctx.ami_snapshot_ids.get((resource.account_id, resource.region))
        if snapshots is None:
            return Truth.UNKNOWN  # so that `not: [backs-ami]` cannot select it either
        backs = resource.resource_id in snapshots
        note(evidence, "backs-ami", backs)
        return Truth.of(backs)


@register_filter("unassociated")
@dataclass(frozen=True, slots=True)
class Unassociated(Relation):
    """An Elastic IP associated with nothing."""

    kinds = frozenset({ResourceKind.ELASTIC_IP})

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        association = resource.attributes.get("AssociationId")
        note(evidence, "unassociated.AssociationId", association)
        return Truth.of(not association)


@register_filter("no-healthy-targets")
@dataclass(frozen=True, slots=True)
class NoHealthyTargets(Relation):
    """A load balancer whose target groups hold no healthy target."""

    kinds = frozenset({ResourceKind.LOAD_BALANCER})

    def evaluate(
        self, resource: Resource, ctx: EvaluationContext, evidence: Evidence | None = None
    ) -> Truth:
        healthy = ctx.lb_healthy_targets.get(resource.resource_id)
        note(evidence, "no-healthy-targets.healthy", healthy)
        if healthy is None:
            # Not known is not zero, and not "some" either: UNKNOWN, so that neither
            # `no-healthy-targets` nor `not: [no-healthy-targets]` selects on it.
            note(evidence, "no-healthy-targets.why", "healthy target count not known")
            return Truth.UNKNOWN
        return Truth.of(healthy == 0)
