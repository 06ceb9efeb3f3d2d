// Actions and runs: each action's state, its before and after, and roll back (approver) or
// retry (operator), each confirmed; the runs, with rolling back a whole run.

import { api, can } from "../api.js";
import {
  badge,
  confirmDialog,
  errorBox,
  field,
  h,
  money,
  newId,
  pageHeading,
  pager,
  say,
  select,
  sr,
  table,
  titleCase,
  twoLines,
  when,
} from "../dom.js";

const STATES = [
  "",
  "proposed",
  "awaiting_approval",
  "approved",
  "executing",
  "succeeded",
  "failed",
  "blocked",
  "rejected",
  "rolled_back",
];
const state = { state: "", policy: "", sort: "-updated_at", offset: 0, runOffset: 0 };

// The last roll back's or retry's outcomes, shown at the top of the page once it has
// re-rendered: a refused or failed one must not pass for a success, and a rollback's detail
// (the new volume id or ARN) is what the person must act on.
let lastOutcome = null;
const RESULT_TONE = {
  rolled_back: "ok",
  succeeded: "ok",
  queued: "info",
  "would-execute": "warn",
};

function keepOutcome(title, outcomes) {
  const attention = outcomes.some((o) => !["ok", "info"].includes(RESULT_TONE[o.result]));
  lastOutcome = { title, outcomes, attention };
  const results = outcomes.map((o) => `action ${o.action_id} ${titleCase(o.result)}`);
  say(`${title}. ${results.join(", ")}.`);
}

function outcomeBox() {
  if (!lastOutcome) return null;
  const { title, outcomes, attention } = lastOutcome;
  lastOutcome = null;
  const lines = outcomes.map((o) =>
    h(
      "li",
      {},
      badge(o.result, RESULT_TONE[o.result] || "bad"),
      ` Action ${o.action_id}: ${o.detail || "no detail given"}`,
    ),
  );
  return h(
    "section",
    {
      class: `card outcome ${attention ? "outcome-bad" : "outcome-ok"}`,
      id: "action-outcome",
      role: attention ? "alert" : "status",
    },
    h("h2", {}, title),
    lines.length ? h("ul", {}, lines) : null,
  );
}

function flatten(doc, prefix = "", out = {}) {
  for (const [key, value] of Object.entries(doc || {})) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value)) flatten(value, name, out);
    else out[name] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return out;
}

/** Before and after side by side; the changed lines are marked in text, not only colour. */
function beforeAfter(detail) {
  const before = flatten(detail.pre_state);
  const after = flatten(detail.post_state);
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  const rows = keys.map((k) => ({
    k,
    b: before[k] ?? "—",
    a: after[k] ?? "—",
    changed: before[k] !== after[k],
  }));
  return [
    table({
      caption: `Before and after action ${detail.id}`,
      columns: [
        { key: "k", label: "Field" },
        { key: "b", label: "Before" },
        { key: "a", label: "After" },
        { label: "Changed", render: (r) => (r.changed ? badge("changed", "warn") : "") },
      ],
      rows,
      empty: "No state was recorded (the action has not run).",
    }),
    detail.backup_ref ? h("p", {}, `Backup: ${detail.backup_ref}`) : null,
    detail.error ? h("p", { class: "error" }, `Error: ${detail.error}`) : null,
  ];
}

/** A disclosure button that opens a full-width row under the action with its before/after. */
function details(a) {
  const button = h(
    "button",
    { type: "button", class: "link", "aria-expanded": "false" },
    "Before / after",
    sr(` of action ${a.id}`),
  );
  button.addEventListener("click", async () => {
    const row = button.closest("tr");
    if (button.getAttribute("aria-expanded") === "true") {
      document.getElementById(button.getAttribute("aria-controls"))?.remove();
      button.setAttribute("aria-expanded", "false");
      return;
    }
    const id = newId("before-after");
    const cell = h("td", { colspan: row.children.length }, h("p", { class: "muted" }, "Loading…"));
    row.after(h("tr", { class: "detail-row", id }, cell));
    button.setAttribute("aria-controls", id);
    button.setAttribute("aria-expanded", "true");
    try {
      cell.replaceChildren(...beforeAfter(await api(`/actions/${a.id}`)).filter(Boolean));
    } catch (error) {
      cell.replaceChildren(h("p", { class: "error" }, error.message));
    }
  });
  return button;
}

function controls(a, refresh) {
  const buttons = [];
  if (can("approver") && (a.state === "succeeded" || a.state === "failed")) {
    buttons.push(
      h(
        "button",
        {
          type: "button",
          class: "danger",
          "aria-label": `Roll back action ${a.id}`,
          onclick: () =>
            confirmDialog({
              title: `Roll back action ${a.id}?`,
              message: `This changes the account now: ${a.kind} ${a.resource_id} in ${a.account_id} / ${a.region} goes back to its state before "${a.action}".`,
              confirmLabel: "Roll back",
              danger: true,
              act: async () => {
                const result = await api(`/actions/${a.id}/rollback`, { method: "POST" });
                keepOutcome(`Roll back of action ${a.id}`, [result]);
              },
            }).then((done) => {
              if (done !== null) refresh();
            }),
        },
        "Roll back",
      ),
    );
  }
  if (can("operator") && a.state === "failed") {
    buttons.push(
      h(
        "button",
        {
          type: "button",
          "aria-label": `Retry action ${a.id}`,
          onclick: () =>
            confirmDialog({
              title: `Retry action ${a.id}?`,
              message:
                "It is judged again on a fresh describe, then run (dry-run unless the API runs live).",
              confirmLabel: "Retry",
              act: async () => {
                const result = await api(`/actions/${a.id}/retry`, { method: "POST" });
                keepOutcome(`Retry of action ${a.id}`, [result]);
              },
            }).then((done) => {
              if (done !== null) refresh();
            }),
        },
        "Retry",
      ),
    );
  }
  return buttons.length ? h("div", { class: "row-buttons" }, buttons) : "—";
}

function runControls(run, refresh) {
  if (!can("approver") || run.dry_run) return "—";
  return h(
    "button",
    {
      type: "button",
      class: "danger",
      "aria-label": `Roll back run ${run.id}`,
      onclick: () =>
        confirmDialog({
          title: `Roll back run ${run.id}?`,
          message:
            "Every succeeded action of this run is undone, newest first. This changes the account now.",
          confirmLabel: "Roll back the run",
          danger: true,
          act: async () => {
            const result = await api(`/runs/${run.id}/rollback`, { method: "POST" });
            const summary = `${result.rolled_back} rolled back, ${result.failed} failed`;
            keepOutcome(`Roll back of run ${run.id}: ${summary}`, result.outcomes);
          },
        }).then((done) => {
          if (done !== null) refresh();
        }),
    },
    "Roll back run",
  );
}

export async function render(root, { refresh }) {
  root.append(
    ...pageHeading(
      "Actions and runs",
      "What the engine did or will do, with each action's state before and after.",
    ),
  );
  const outcome = outcomeBox();
  if (outcome) root.append(outcome);
  const stateSelect = select(
    "state",
    STATES.map((v) => [v, v ? v.replaceAll("_", " ") : "All states"]),
    state.state,
  );
  const policyInput = h("input", { name: "policy", value: state.policy });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter actions" },
    field("State", stateSelect),
    field("Policy", policyInput),
    h(
      "div",
      { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
    ),
  );
  const actionsBox = h("div", { id: "action-results" });
  const runsBox = h("div", { id: "run-results" });
  root.append(h("h2", {}, "Actions"), form, actionsBox, h("h2", {}, "Runs"), runsBox);

  async function loadActions() {
    const page = await api("/actions", {
      query: {
        state: state.state,
        policy: state.policy,
        sort: state.sort,
        offset: state.offset,
        limit: 25,
      },
    });
    actionsBox.replaceChildren(
      table({
        caption: "Actions",
        sort: state.sort,
        onSort: (name) => {
          state.sort = state.sort === `-${name}` ? name : `-${name}`;
          state.offset = 0; // the first page of the new order, not page n of it
          showActions();
        },
        columns: [
          {
            label: "Action",
            sort: "id",
            render: (a) => twoLines(`#${a.id} ${a.action}`, a.policy_name),
          },
          {
            label: "State",
            sort: "state",
            render: (a) => [
              badge(a.state),
              twoLines(`by ${a.requested_by}`, a.approved_by ? `approved by ${a.approved_by}` : ""),
            ],
          },
          {
            label: "Resource",
            render: (a) => twoLines(`${a.kind} ${a.resource_id}`, `${a.account_id} / ${a.region}`),
          },
          {
            label: "Savings / month",
            numeric: true,
            sort: "estimated_monthly_savings",
            render: (a) => money(a.estimated_monthly_savings),
          },
          { label: "Updated", sort: "updated_at", render: (a) => when(a.updated_at) },
          { label: "Details", render: details },
          { label: "Controls", render: (a) => controls(a, refresh) },
        ],
        rows: page.items,
        empty: "No action matches.",
      }),
      pager(page, (offset) => {
        state.offset = offset;
        showActions();
      }),
    );
  }

  // After the first load: a failed request clears the rows (they no longer answer the
  // filter, sort or page asked for) and says why.
  function showActions() {
    loadActions().catch((error) => actionsBox.replaceChildren(errorBox(error)));
  }

  async function loadRuns() {
    const page = await api("/runs", { query: { offset: state.runOffset, limit: 10 } });
    runsBox.replaceChildren(
      table({
        caption: "Runs, newest first",
        columns: [
          { label: "Run", render: (r) => `#${r.id}` },
          {
            label: "Status",
            render: (r) => badge(r.status, r.status === "finished" ? "ok" : "warn"),
          },
          { label: "Mode", render: (r) => (r.dry_run ? "dry-run" : "live") },
          { key: "triggered_by", label: "Triggered by" },
          { label: "Started", render: (r) => when(r.started_at) },
          { label: "Finished", render: (r) => when(r.finished_at) },
          {
            label: "Summary",
            render: (r) =>
              Object.entries(r.summary || {})
                .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
                .join(", ") || "—",
          },
          { label: "Controls", render: (r) => runControls(r, refresh) },
        ],
        rows: page.items,
        empty: "No run yet.",
      }),
      pager(page, (offset) => {
        state.runOffset = offset;
        loadRuns().catch((error) => runsBox.replaceChildren(errorBox(error)));
      }),
    );
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.state = stateSelect.value;
    state.policy = policyInput.value.trim();
    state.offset = 0;
    showActions();
  });
  await Promise.all([loadActions(), loadRuns()]);
}
