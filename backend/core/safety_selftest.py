"""`SafetyChecker().run_full_check()`: every rule against known cases, each must hold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind
from backend.domain.safety import (
    ActionFacts,
    BatchItem,
    Dependencies,
    Exemption,
    FleetCounts,
    Rule,
    SafetyConfig,
    check_batch,
    judge,
)

EC2 = ResourceKind.EC2_INSTANCE


def _facts(tags: dict[str, str] | None = None, **kw: object) -> ActionFacts:
    base: dict[str, object] = {
        "action": "stop",
        "kind": EC2,
        "account_id": "111111111111",
        "region": "us-east-1",
        "resource_id": "i-selftest",
        "still_matches": Truth.TRUE,
        "dependencies": Dependencies(),
        "approved": True,
        "mode": "auto",
        "resource": Resource(
            kind=EC2,
            resource_id="i-selftest",
            account_id="111111111111",
            region="us-east-1",
            state="running",
            tags=tags or {},
        ),
    }
    base.update(kw)
    return ActionFacts(**base)  # type: ignore[arg-type]


def _exemption(scope: str, target: str, until: dt.datetime | None) -> Exemption:
    return Exemption(scope, target, "self-test", "selftest", until=until, ident=0)


def _exemption_cases(
    config: SafetyConfig, now: dt.datetime
) -> list[tuple[str, Rule | None, Callable[[], ActionFacts], SafetyConfig]]:
    """Resource- and account-scope overrides block; an ended one no longer does."""
    later, ended = now + dt.timedelta(days=1), now - dt.timedelta(seconds=1)
    return [
        (
            "a resource override blocks",
            Rule.EXEMPTED,
            lambda: _facts(exemptions=(_exemption("resource", "i-selftest", later),)),
            config,
        ),
        (
            "an account override blocks",
            Rule.EXEMPTED,
            lambda: _facts(exemptions=(_exemption("account", "111111111111", None),)),
            config,
        ),
        (
            "an ended override no longer blocks",
            None,
            lambda: _facts(exemptions=(_exemption("resource", "i-selftest", ended),)),
            config,
        ),
    ]


def run_self_test(config: SafetyConfig, now: dt.datetime) -> list[tuple[str, bool, str]]:
    """(case, passed, detail) for each known case; the live configuration is used."""
    account = next(iter(config.protected_accounts), "999999999999")
    region = next(iter(config.protected_regions), "ap-south-2")
    guarded = replace(
        config, protected_accounts=frozenset({account}), protected_regions=frozenset({region})
    )
    hour = dt.timedelta(hours=1)
    frozen = replace(config, freeze_windows=((now - hour, now + hour),))
    prod = next(iter(config.protected_tag_values), "prod")
    cases: list[tuple[str, Rule | None, Callable[[], ActionFacts], SafetyConfig]] = [
        ("a harmless stop is allowed", None, _facts, config),
        (
            f"{config.protected_tag_key}={prod} blocks",
            Rule.PROTECTED_TAG,
            lambda: _facts({config.protected_tag_key: prod.upper()}),
            config,
        ),
        (
            f"{config.protected_tag_key.upper()}={prod} blocks (the key in any case)",
            Rule.PROTECTED_TAG,
            lambda: _facts({config.protected_tag_key.upper(): prod}),
            config,
        ),
        (
            "the opt-out tag blocks",
            Rule.OPT_OUT,
            lambda: _facts({config.opt_out_tag: "true"}),
            config,
        ),
        (
            "the opt-out tag blocks in any case",
            Rule.OPT_OUT,
            lambda: _facts({config.opt_out_tag.upper() + " ": "true"}),
            config,
        ),
        (
            "a protected account blocks",
            Rule.PROTECTED_ACCOUNT,
            lambda: _facts(account_id=account),
            guarded,
        ),
        (
            "a protected region blocks",
            Rule.PROTECTED_REGION,
            lambda: _facts(region=region),
            guarded,
        ),
        ("a change freeze blocks", Rule.FREEZE, _facts, frozen),
        ("a vanished resource blocks", Rule.EXISTS, lambda: _facts(resource=None), config),
        (
            "the wrong state blocks",
            Rule.STATE,
            lambda: _facts(
                resource=Resource(
                    kind=EC2,
                    resource_id="i-selftest",
                    account_id="111111111111",
                    region="us-east-1",
                    state="stopped",
                )
            ),
            config,
        ),
        (
            "no longer selected blocks",
            Rule.STILL_MATCHES,
            lambda: _facts(still_matches=Truth.FALSE),
            config,
        ),
        (
            "unknown selection blocks",
            Rule.STILL_MATCHES,
            lambda: _facts(still_matches=Truth.UNKNOWN),
            config,
        ),
        (
            "an Auto Scaling member blocks",
            Rule.DEPENDENCY,
            lambda: _facts(dependencies=Dependencies(in_auto_scaling_group="web")),
            config,
        ),
        (
            "stop protection blocks",
            Rule.DEPENDENCY,
            lambda: _facts(dependencies=Dependencies(stop_protected=True)),
            config,
        ),
        ("unprobed dependencies block", Rule.DEPENDENCY, lambda: _facts(dependencies=None), config),
        (
            "an attached volume is not deleted",
            Rule.DEPENDENCY,
            lambda: _facts(
                action="delete",
                kind=ResourceKind.EBS_VOLUME,
                resource=Resource(
                    kind=ResourceKind.EBS_VOLUME,
                    resource_id="vol-selftest",
                    account_id="111111111111",
                    region="us-east-1",
                    state="available",
                ),
                dependencies=Dependencies(attached_to=("i-1",)),
            ),
            config,
        ),
        (
            "an irreversible action needs approval",
            Rule.APPROVAL,
            lambda: _facts(
                action="delete",
                kind=ResourceKind.EBS_SNAPSHOT,
                approved=False,
                resource=Resource(
                    kind=ResourceKind.EBS_SNAPSHOT,
                    resource_id="snap-selftest",
                    account_id="111111111111",
                    region="us-east-1",
                    state="completed",
                ),
            ),
            config,
        ),
    ]
    cases.append(
        (
            "a promised notice never delivered blocks",
            Rule.OWNER_NOTICE,
            lambda: _facts(notice_required=True, notice_delivered=False),
            config,
        )
    )
    cases += _exemption_cases(config, now)
    results: list[tuple[str, bool, str]] = []
    for name, rule, make, cfg in cases:
        try:
            judgement = judge(make(), cfg, now, before_execution=True)
            blocked_by = {v.rule for v in judgement.blocking}
            ok = judgement.allowed if rule is None else rule in blocked_by
            results.append((name, ok, judgement.summary()))
        except Exception as exc:  # noqa: BLE001 - a crash is a failed case
            results.append((name, False, f"crashed: {exc}"))
    over = check_batch(
        [BatchItem("selftest", EC2)] * (config.max_actions_per_run + 1),
        FleetCounts({EC2: 10_000_000}),
        executed_last_hour=0,
        config=config,
    )
    results.append(("a batch over the run limit stops whole", not over.ok, over.reason))
    return results
