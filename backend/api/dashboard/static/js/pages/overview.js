// Overview: monthly cost by kind, account and region; estimated and realized savings by
// month; the engine's state and the emergency stop.

import { api } from "../api.js";
import { barChart, columnChart } from "../charts.js";
import { badge, count, h, money, pageHeading } from "../dom.js";

function stat(label, value, note, id) {
  return h(
    "div",
    { class: "stat card", id },
    h("p", { class: "stat-label" }, label),
    h("p", { class: "stat-value" }, value),
    note ? h("p", { class: "stat-note" }, note) : null,
  );
}

function costRows(rows) {
  return rows.map((r) => ({
    label: r.key,
    value: r.monthly_cost,
    text:
      r.unpriced === r.resources
        ? "unpriced"
        : r.unpriced
          ? `${money(r.monthly_cost)} + ${r.unpriced} unpriced`
          : null,
    note: r.unpriced ? `${r.resources} (${r.unpriced} unpriced)` : String(r.resources),
  }));
}

function engineCard(engine, stop) {
  const items = [
    ["Engine", engine ? engine.state : "unreadable"],
    ["Mode", engine ? engine.mode : "—"],
    ["Backlog", engine ? engine.backlog : "—"],
    ["Failure rate", engine ? engine.failure_rate : "—"],
    ["Emergency stop", stop ? (stop.engaged ? "ENGAGED" : "released") : "unreadable"],
  ];
  return h(
    "section",
    { class: "card", "aria-labelledby": "engine-title", id: "engine-state" },
    h("h2", { id: "engine-title" }, "Engine and emergency stop"),
    h(
      "dl",
      { class: "facts" },
      items.map(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k } }, v)]),
    ),
    stop && stop.engaged
      ? h("p", {}, badge("stopped", "bad"), ` ${stop.description}`)
      : h("p", {}, badge("running", "ok"), " Automation may run within its policies."),
    engine && engine.problems.length
      ? h(
          "ul",
          { class: "problems" },
          engine.problems.map((p) => h("li", {}, p)),
        )
      : null,
  );
}

export async function render(root) {
  root.append(
    ...pageHeading(
      "Overview",
      "Where the money goes, what the policies found, and what was saved.",
    ),
  );
  const [costs, savings, byMonth, waiting, engine, stop] = await Promise.all([
    api("/dashboard/costs"),
    api("/reports/savings", { query: { group_by: "policy" } }),
    api("/reports/savings", { query: { group_by: "month" } }),
    api("/actions", { query: { state: "awaiting_approval", limit: 1 } }),
    api("/engine/status").catch(() => null),
    api("/emergency-stop").catch(() => null),
  ]);
  const totals = savings.totals;
  const realized = totals.realized_measured + totals.realized_from_estimates;
  // an opportunity that could not be priced is not in the estimate: said, never counted as $0
  const unpriced = totals.savings_unknown ? ` (${totals.savings_unknown} not priced)` : "";
  root.append(
    h(
      "section",
      { class: "stats", "aria-label": "Totals" },
      stat(
        "Monthly cost",
        money(costs.total.monthly_cost),
        `${costs.total.resources} resources${costs.total.unpriced ? `, ${costs.total.unpriced} unpriced` : ""}`,
        "stat-cost",
      ),
      stat(
        "Estimated savings",
        money(totals.estimated_monthly_savings),
        `per month, ${totals.opportunities} open opportunities${unpriced}`,
        "stat-estimated",
      ),
      stat(
        "Realized savings",
        money(realized),
        `per month, ${totals.succeeded_actions} actions (${money(totals.realized_measured)} measured)`,
        "stat-realized",
      ),
      stat("Awaiting approval", count(waiting), "actions", "stat-waiting"),
      stat(
        "Automation",
        stop && stop.engaged ? "Stopped" : engine ? engine.state.split(" (")[0] : "unknown",
        stop
          ? stop.engaged
            ? `emergency stop engaged by ${stop.engaged_by}`
            : "emergency stop released"
          : "emergency stop unreadable",
        "stat-engine",
      ),
    ),
    h(
      "section",
      { class: "charts", "aria-labelledby": "cost-title" },
      h("h2", { id: "cost-title" }, "Monthly cost"),
      h(
        "div",
        { class: "chart-grid" },
        barChart({ title: "Cost by kind", rows: costRows(costs.by_kind) }),
        barChart({ title: "Cost by account", rows: costRows(costs.by_account) }),
        barChart({ title: "Cost by region", rows: costRows(costs.by_region) }),
      ),
    ),
    h(
      "div",
      { class: "split" },
      h(
        "section",
        { class: "charts", "aria-labelledby": "savings-title" },
        h("h2", { id: "savings-title" }, "Savings over time"),
        columnChart({
          title: "Monthly savings by month",
          categories: byMonth.rows.map((r) => r.key),
          series: [
            {
              name: "Estimated (open opportunities, by month found)",
              values: byMonth.rows.map((r) => r.estimated_monthly_savings),
            },
            { name: "Realized, measured", values: byMonth.rows.map((r) => r.realized_measured) },
            {
              name: "Realized, from estimates (not yet measured)",
              values: byMonth.rows.map((r) => r.realized_from_estimates),
            },
          ],
        }),
      ),
      engineCard(engine, stop),
    ),
  );
}
