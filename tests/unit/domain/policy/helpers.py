"""Builders shared by the policy tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import yaml

from backend.domain.policy import EvaluationContext, Filter, Truth, load_text
from backend.domain.resources import MetricValues, Resource, ResourceKind

NOW = dt.datetime(2024, 6, 3, 12, 0, tzinfo=dt.UTC)
ACCOUNT = "111111111111"
REGION = "us-east-1"


def res(
    kind: str = "ec2",
    rid: str = "i-1",
    state: str = "running",
    tags: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    created_at: dt.datetime | None = None,
    state_changed_at: dt.datetime | None = None,
) -> Resource:
    return Resource(
        kind=ResourceKind(kind),
        resource_id=rid,
        account_id=account,
        region=region,
        state=state,
        tags=dict(tags or {}),
        attributes=dict(attributes or {}),
        created_at=created_at,
        state_changed_at=state_changed_at,
    )


def ctx(metrics: MetricValues | None = None, **kw: Any) -> EvaluationContext:
    return EvaluationContext(now=kw.pop("now", NOW), metrics=metrics or {}, **kw)


def policy_yaml(filters: Any, resource: str = "ec2", **extra: Any) -> str:
    policy: dict[str, Any] = {"name": "p", "resource": resource, "filters": filters, **extra}
    return yaml.safe_dump({"policies": [policy]}, sort_keys=False)


def filters_of(filters: Any, resource: str = "ec2") -> Filter:
    return load_text(policy_yaml(filters, resource)).policies[0].filters


def truth(filters: Any, resource: Resource, context: EvaluationContext | None = None) -> Truth:
    return filters_of(filters, resource.kind.value).evaluate(resource, context or ctx())
