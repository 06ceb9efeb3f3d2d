"""`finops demo`: a whole scan of a simulated account, with no servers and no credentials."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from backend.cli.app import CommandError, app, console, handle_errors, settings
from backend.cli.render import print_opportunities, print_summary
from backend.core.migrations import ensure_schema
from backend.core.scan_service import ScanOutcome, ScanService
from backend.demo.cycle import APPROVER, CycleResult, run_cycle
from backend.demo.fleet import MIN_INSTANCES_PER_REGION
from backend.demo.home import DemoBusyError, demo_home
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.session import AwsClients

DEFAULT_PACK = Path(__file__).resolve().parents[2] / "policies"


@app.command()
@handle_errors
def demo(
    instances: Annotated[
        int, typer.Option(help="EC2 instances per region.", min=MIN_INSTANCES_PER_REGION)
    ] = 120,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated fleet.")] = 42,
    policies: Annotated[Path, typer.Option(help="Policy pack to evaluate.")] = DEFAULT_PACK,
) -> None:
    """Create a simulated AWS account in-process, scan it, and show its waste and traps.

    It runs on a SQLite database of its own, new on each run (<FINOPS_DATA_DIR>/demo),
    whatever DATABASE_URL and REDIS_URL say: a simulated account never lands in a real one.
    """
    from backend.cli.scan import load_policies

    pack = load_policies([policies])
    try:
        with demo_home(settings().data_dir) as home:
            cycle, scan_id = _run(pack, instances, seed)
    except DemoBusyError as exc:
        raise CommandError(str(exc)) from None
    _print_cycle(cycle)
    console.print(
        f"database: {home.database_url}  (scan {scan_id}; the demo's own, made afresh on "
        "each run: DATABASE_URL and REDIS_URL are not used)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "every step above is in its audit log; to explore it with the CLI, in your shell:",
        highlight=False,
    )
    console.print(f"  {home.export_line()}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        "  finops actions list; finops audit verify; finops audit timeline --since 1h",
        highlight=False,
    )
    if cycle.emergency_stop:
        console.print(
            f"[red]the demo stopped early: {cycle.emergency_stop}[/red]\n"
            "release it with `finops resume --actor NAME --i-am-admin` in that shell "
            "(the next `finops demo` starts afresh anyway)",
            highlight=False,
        )
        raise typer.Exit(1)


def _run(pack: PolicyPack, instances: int, seed: int) -> tuple[CycleResult, int]:
    import boto3
    from moto import mock_aws

    from backend.demo.fleet import seed_demo_fleet

    cfg = settings()
    ensure_schema()
    # The simulated account never talks to a real endpoint, whatever the environment says.
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)
    regions = ("us-east-1", "eu-west-1")
    with mock_aws():
        started = time.perf_counter()

        def client(service: str, region: str) -> Any:
            return boto3.client(service, region_name=region)

        fleet = seed_demo_fleet(client, regions, seed=seed, instances_per_region=instances)
        console.print(
            f"simulated account seeded: {fleet.total} resources in "
            f"{', '.join(regions)} ({time.perf_counter() - started:.1f}s)"
        )
        clients = AwsClients(endpoint_url=None)
        outcome = ScanService(cfg, clients=clients).run(pack=pack, regions=list(regions))
        print_summary(console, outcome)
        print_opportunities(console, outcome)
        _print_traps(outcome, fleet.traps)
        return run_cycle(cfg, pack, clients), outcome.scan_id


def _print_cycle(cycle: CycleResult) -> None:
    plan = cycle.plan
    console.rule("The cycle: plan on day 0, act as each owner's notice ends")
    console.print(
        f"planned {len(plan.created) + len(plan.blocked)} action(s): "
        f"{len(plan.approved)} approved by their policy, {len(plan.awaiting)} "
        f"waiting for a person, {len(plan.blocked)} blocked by the safety rules; "
        f"{cycle.approved_by_person} approved by {APPROVER} (not the requester)"
    )
    console.print(
        f"owner notices: {cycle.notices} mail(s) delivered to the owners (the demo's "
        "loopback mailbox); their resources marked finops:scheduled-action"
    )
    first = cycle.first_try
    if first.stopped_by:
        console.print(
            f"[yellow]a run of every due action at once was stopped whole by the "
            f"blast-radius limits[/yellow] ({first.stopped_by})",
            highlight=False,
        )
    chosen = cycle.chosen
    results = Counter(o.result for o in chosen.outcomes)
    console.print(
        f"executed, LIVE in the simulated account, in batches within the limits: {dict(results)}",
        highlight=False,
    )
    for outcome in [o for o in chosen.outcomes if o.result != "succeeded"][:5]:
        console.print(
            f"  action {outcome.action_id} {outcome.result}: {outcome.detail}", highlight=False
        )
    console.print(f"rollback: {cycle.rolled_back}", highlight=False)
    console.print(f"estimated savings of what was done: ${cycle.saved_per_month:,.2f}/month")
    console.print(
        "blocked by the safety rules, by rule: "
        + (", ".join(f"{rule} {n}" for rule, n in cycle.blocked_by_rule.most_common()) or "none"),
        highlight=False,
    )


def _print_traps(outcome: ScanOutcome, traps: Any) -> None:
    """Which traps a policy selected: the safety rules judge those before anything acts."""
    selected: dict[str, set[str]] = {}
    for opp in outcome.opportunities:
        selected.setdefault(opp.resource.resource_id, set()).add(opp.policy)
    console.print("Traps in the simulated account (what a careless tool would harm):")
    for trap, ids in traps.items():
        hit = sorted({p for rid in ids for p in selected.get(rid, ())})
        note = f"selected by {', '.join(hit)}" if hit else "selected by no policy"
        console.print(f"  {trap:24} {len(ids):3} resource(s)  {note}", highlight=False)
