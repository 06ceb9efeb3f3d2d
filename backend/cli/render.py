"""Tables and JSON for what a scan found and what it costs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table

from backend.core.scan_service import ScanOutcome


def money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def cost_rows(outcome: ScanOutcome) -> list[dict[str, Any]]:
    """Count and monthly cost per (kind, account, region) of what this scan saw."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for resource, cost in outcome.costs:
        key = (resource.kind.value, resource.account_id, resource.region)
        row = groups.setdefault(
            key,
            {
                "kind": key[0],
                "account": key[1],
                "region": key[2],
                "count": 0,
                "monthly_cost": 0.0,
                "unpriced": 0,
            },
        )
        row["count"] += 1
        if cost is None:
            row["unpriced"] += 1
        else:
            row["monthly_cost"] = round(row["monthly_cost"] + cost, 2)
    return [groups[k] for k in sorted(groups)]


def summary_json(outcome: ScanOutcome) -> dict[str, Any]:
    rows = cost_rows(outcome)
    totals: dict[str, dict[str, dict[str, Any]]] = {"kind": {}, "account": {}, "region": {}}
    for row in rows:
        for axis in totals:
            t = totals[axis].setdefault(row[axis], {"count": 0, "monthly_cost": 0.0})
            t["count"] += row["count"]
            t["monthly_cost"] = round(t["monthly_cost"] + row["monthly_cost"], 2)
    _mark_unscanned_accounts(outcome, totals["account"])
    policies: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "monthly_savings": 0.0})
    for opp in outcome.opportunities:
        p = policies[opp.policy]
        p["count"] += 1
        p["monthly_savings"] = round(p["monthly_savings"] + (opp.monthly_savings or 0.0), 2)
    return {
        "scan_id": outcome.scan_id,
        "status": outcome.status,
        "seconds": round(outcome.seconds, 2),
        "resources": len(outcome.discovery.resources),
        "monthly_cost": round(sum(r["monthly_cost"] for r in rows), 2),
        "by_kind": totals["kind"],
        "by_account": totals["account"],
        "by_region": totals["region"],
        "groups": rows,
        "unpriced": [{"resource": r.resource_id, "why": why} for r, why in outcome.unpriced],
        "not_scanned": {**outcome.discovery.failures, **outcome.metric_failures},
        "gone": outcome.gone,
        "metrics_fetched": outcome.metrics_fetched,
        "opportunities": dict(sorted(policies.items())),
        "estimated_monthly_savings": round(
            sum(o.monthly_savings or 0.0 for o in outcome.opportunities), 2
        ),
    }


def _mark_unscanned_accounts(outcome: ScanOutcome, by_account: dict[str, dict[str, Any]]) -> None:
    """An account with failed parts is listed, flagged: its totals are not what it holds. An
    account nothing could be read from (its role not assumed) would otherwise be missing."""
    scanned = {account for account, _, _ in outcome.discovery.complete_parts}
    for label in sorted(outcome.discovery.failures):
        account = label.split("/", 1)[0]
        entry = by_account.setdefault(account, {"count": 0, "monthly_cost": 0.0})
        entry["not_scanned" if account not in scanned else "incomplete"] = True


def print_summary(console: Console, outcome: ScanOutcome) -> None:
    data = summary_json(outcome)
    table = Table(title=f"Inventory and monthly cost (scan {outcome.scan_id}, {outcome.status})")
    for col, justify in (
        ("kind", "left"),
        ("account", "left"),
        ("region", "left"),
        ("count", "right"),
        ("monthly cost", "right"),
        ("unpriced", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in data["groups"]:
        table.add_row(
            row["kind"],
            row["account"],
            row["region"],
            str(row["count"]),
            money(row["monthly_cost"]),
            str(row["unpriced"] or ""),
        )
    table.add_section()
    table.add_row("total", "", "", str(data["resources"]), money(data["monthly_cost"]), "")
    console.print(table)
    for axis in ("kind", "account", "region"):
        parts = ", ".join(
            f"{k} {money(v['monthly_cost'])}{_flag(v)}" for k, v in data[f"by_{axis}"].items()
        )
        console.print(f"by {axis}: {parts}", highlight=False)
    if data["unpriced"]:
        console.print(
            f"[yellow]{len(data['unpriced'])} resource(s) could not be priced[/yellow]"
            f", e.g. {data['unpriced'][0]['why']}"
        )
    if data["not_scanned"]:
        console.print("[red]Not scanned (nothing there was marked gone):[/red]")
        for part, why in data["not_scanned"].items():
            console.print(f"  {part}: {why}", highlight=False)
    if outcome.gone:
        console.print(f"{outcome.gone} resource(s) no longer found; marked gone")


def _flag(total: dict[str, Any]) -> str:
    if total.get("not_scanned"):
        return " (not scanned)"
    return " (incomplete)" if total.get("incomplete") else ""


def print_opportunities(console: Console, outcome: ScanOutcome) -> None:
    data = summary_json(outcome)
    table = Table(title="Opportunities (dry-run: nothing was changed)")
    table.add_column("policy")
    table.add_column("resources", justify="right")
    table.add_column("est. monthly savings", justify="right")
    for name, row in data["opportunities"].items():
        table.add_row(name, str(row["count"]), money(row["monthly_savings"]))
    table.add_section()
    table.add_row(
        "total", str(len(outcome.opportunities)), money(data["estimated_monthly_savings"])
    )
    console.print(table)
