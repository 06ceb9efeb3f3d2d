// Policies: what each does, its mode, schedule, limits and whether it may run now. Disabling
// (operator) and enabling or resuming (approver) are offered to the roles the API allows.

import { api, can } from "../api.js";
import { badge, confirmDialog, h, pageHeading, say, table, when } from "../dom.js";

function limits(d) {
  if (!d) return "—";
  const parts = [];
  const days = (n) => `${n} day${n === 1 ? "" : "s"}`;
  if (d.max_actions_per_run !== null) parts.push(`${d.max_actions_per_run} actions per run`);
  if (d.max_percent_of_fleet !== null) parts.push(`${d.max_percent_of_fleet}% of the fleet`);
  if (d.notify_owner) parts.push(`owner notice: ${days(d.grace_days)}`);
  if (d.rollback_window_days !== null) parts.push(`rollback: ${days(d.rollback_window_days)}`);
  return parts.length
    ? h(
        "ul",
        { class: "plain" },
        parts.map((p) => h("li", {}, p)),
      )
    : "global limits only";
}

function what(p, d) {
  return h(
    "div",
    {},
    h("p", {}, p.description || "(no description)"),
    d
      ? h(
          "p",
          { class: "muted" },
          `${p.action} on ${p.kind}: ${d.action_description || ""}${d.destructive ? " Destroys data (backup first where the action takes one)." : ""}${d.reversible ? " Can be undone." : " Cannot be undone."}`,
        )
      : null,
  );
}

function status(p) {
  if (p.runs_now) return badge("enabled", "ok");
  return h(
    "div",
    {},
    badge("held", "warn"),
    h(
      "ul",
      { class: "plain" },
      p.blocked_by.map((b) => h("li", {}, b)),
    ),
  );
}

function change(p, verb, refresh) {
  const path = `/policies/${encodeURIComponent(p.name)}/${verb}`;
  const required = verb === "disable";
  return h(
    "button",
    {
      type: "button",
      class: verb === "disable" ? "danger" : "primary",
      "aria-label": `${verb.charAt(0).toUpperCase()}${verb.slice(1)} policy ${p.name}`,
      onclick: () =>
        confirmDialog({
          title: `${verb.charAt(0).toUpperCase()}${verb.slice(1)} policy ${p.name}?`,
          message:
            verb === "disable"
              ? "It plans and runs nothing until it is enabled again; approved actions wait."
              : "It may plan and run again, within its mode and limits.",
          confirmLabel: verb.charAt(0).toUpperCase() + verb.slice(1),
          danger: verb === "disable",
          text: {
            label: required ? "Reason (required, kept in the audit log)" : "Reason (optional)",
            required,
          },
          act: (reason) => api(path, { method: "POST", body: { reason: reason || null } }),
        }).then((done) => {
          if (done !== null) {
            say(`Policy ${p.name}: ${verb}d.`);
            refresh();
          }
        }),
    },
    verb.charAt(0).toUpperCase() + verb.slice(1),
  );
}

function controls(p, refresh) {
  const buttons = [];
  if (p.enabled_in_database && can("operator")) buttons.push(change(p, "disable", refresh));
  if (!p.enabled_in_database && can("approver")) buttons.push(change(p, "enable", refresh));
  if (p.paused_until && can("approver")) buttons.push(change(p, "resume", refresh));
  return buttons.length ? h("div", { class: "row-buttons" }, buttons) : "—";
}

export async function render(root, { refresh }) {
  root.append(
    ...pageHeading(
      "Policies",
      "What each policy does, how it acts, when, and within which limits.",
    ),
  );
  const [page, details] = await Promise.all([
    api("/policies", { query: { limit: 500 } }),
    api("/dashboard/policies"),
  ]);
  const byName = Object.fromEntries(details.map((d) => [d.name, d]));
  root.append(
    table({
      caption: `${page.total} policies`,
      columns: [
        { key: "name", label: "Policy" },
        { label: "What it does", render: (p) => what(p, byName[p.name]) },
        {
          label: "Mode",
          render: (p) => [
            h("span", { class: "line" }, p.mode),
            badge(`${p.risk} risk`, { high: "bad", low: "ok" }[p.risk] || "warn"),
          ],
        },
        { label: "Schedule", render: (p) => p.schedule || "with each scan" },
        { label: "Limits", render: (p) => limits(byName[p.name]) },
        { label: "Enabled", render: status },
        { label: "Paused until", render: (p) => (p.paused_until ? when(p.paused_until) : "—") },
        { label: "Controls", render: (p) => controls(p, refresh) },
      ],
      rows: page.items,
      empty: "No policy is configured.",
    }),
  );
}
