"""`finops scan`: inventory, utilisation and cost; with --policies, opportunities too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backend.cli.app import CommandError, app, console, err, handle_errors, settings
from backend.cli.render import print_opportunities, print_summary, summary_json
from backend.core.discovery import PartKey
from backend.core.migrations import ensure_schema
from backend.core.scan_service import ScanOutcome, ScanService, kinds_for
from backend.domain.policy.model import PolicyPack

# Exit status: 0 everything scanned; 1 nothing scanned (failed); 4 partial: some account,
# region or kind (or its metrics) not scanned, so totals and selections leave it out. A
# wrapper that checks only for non-zero must not take a partial scan for a full one.
EXIT_FAILED = 1
EXIT_PARTIAL = 4
SCAN_HELP = (
    "Inventory the accounts and regions, measure utilisation, and price what runs.\n\n"
    "Exit status: 0 all scanned; 1 nothing could be scanned; 4 partial: some account, region, "
    "kind or metric query not scanned (listed under 'Not scanned'; in --json under not_scanned, "
    'and its account in by_account with "not_scanned": true or "incomplete": true); '
    "2 bad configuration or input; 3 database or file error."
)


def load_policies(paths: list[Path]) -> PolicyPack:
    from backend.domain.policy.loader import PolicyValidationError, load_pack

    try:
        return load_pack(paths)
    except PolicyValidationError as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        raise CommandError(
            f"policy pack refused ({len(exc.problems)} problem(s)):\n{lines}", code=2
        ) from None


@app.command(help=SCAN_HELP)
@handle_errors
def scan(
    policies: Annotated[
        list[Path] | None,
        typer.Option("--policies", "-p", help="Policy file or directory (repeatable)."),
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option("--region", "-r", help="Region to scan (repeatable); default FINOPS_REGIONS."),
    ] = None,
    account: Annotated[
        list[str] | None,
        typer.Option(
            "--account", "-a", help="Account id to scan (repeatable); default FINOPS_ACCOUNTS."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Accepted for clarity: a scan never changes the account."),
    ] = True,
    selection_out: Annotated[
        Path | None, typer.Option(help="Write {policy: [resource ids]} as JSON here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Inventory the accounts and regions, measure utilisation, and price what runs."""
    cfg = settings()
    pack = load_policies(policies) if policies else None
    ensure_schema()
    service = ScanService(cfg)
    regions = region or cfg.regions
    outcome = _run_with_progress(service, pack, regions, account or [], quiet=as_json)
    if selection_out:
        names = [p.name for p in pack.policies] if pack else []
        selection: dict[str, list[str]] = {name: [] for name in names} | outcome.selection
        selection_out.write_text(json.dumps(selection, indent=1, sort_keys=True))
    if as_json:
        console.print_json(json.dumps(summary_json(outcome)))
    else:
        print_summary(console, outcome)
        if pack is not None:
            print_opportunities(console, outcome)
        console.print(
            f"scanned in {outcome.seconds:.1f}s; {outcome.metrics_fetched} metric series",
            highlight=False,
        )
    if outcome.status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if outcome.status == "partial":
        raise typer.Exit(EXIT_PARTIAL)


def _run_with_progress(
    service: ScanService,
    pack: PolicyPack | None,
    regions: list[str],
    accounts: list[str],
    *,
    quiet: bool,
) -> ScanOutcome:
    kinds = kinds_for(pack)
    targets = service.targets(accounts)
    total = len(targets) * len(regions) * len(kinds)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        parts = progress.add_task("describing", total=total)
        series = progress.add_task("metrics", total=None)

        def on_part(part: PartKey, count: int, error: str | None) -> None:
            progress.advance(parts)
            if error:
                progress.console.print(f"[red]{'/'.join(part)}: {error}[/red]", highlight=False)

        def on_metrics(count: int) -> None:
            progress.advance(series, count)

        return service.run(
            pack=pack,
            regions=regions,
            accounts=accounts,
            on_part=on_part,
            on_metrics=on_metrics,
        )
