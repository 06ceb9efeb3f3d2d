// The audit log: searchable by actor, event type, subject, outcome and time, with the result
// of verifying the hash chain (an edited, deleted or reordered event is named).

import { api } from "../api.js";
import {
  badge,
  count,
  errorBox,
  facts,
  field,
  h,
  pageHeading,
  pager,
  select,
  sr,
  table,
  when,
} from "../dom.js";

const TYPES = [
  "scan",
  "opportunity",
  "action_proposed",
  "safety_verdict",
  "approval",
  "rejection",
  "execution",
  "rollback",
  "emergency_stop",
  "emergency_resume",
  "config_change",
  "policy_change",
  "login",
  "api_call",
  "test",
];
const state = {
  event_type: "",
  actor: "",
  subject_type: "",
  subject_id: "",
  outcome: "",
  since: "",
  until: "",
  text: "",
  offset: 0,
};

function verification(report) {
  const tone = report.ok ? "ok" : "bad";
  return h(
    "section",
    {
      class: `card verify verify-${tone}`,
      id: "chain-verification",
      "aria-labelledby": "verify-title",
    },
    h("h2", { id: "verify-title" }, "Chain verification"),
    h(
      "p",
      { class: "verify-result" },
      badge(report.ok ? "verified" : "broken", tone),
      " ",
      report.summary,
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Events checked"),
      h("dd", {}, String(report.checked)),
      h("dt", {}, "Head event"),
      h("dd", {}, report.head_id === null ? "—" : `#${report.head_id}`),
      report.ok
        ? null
        : [
            h("dt", {}, "First broken event"),
            h("dd", {}, `#${report.first_broken_id}: ${report.reason}`),
          ],
    ),
  );
}

function isoOrEmpty(local) {
  if (!local) return "";
  const d = new Date(`${local}Z`); // the inputs are in UTC, as the log is
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export async function render(root) {
  root.append(...pageHeading("Audit log", "Every decision, hash-chained. Times are UTC."));
  const verifyBox = h(
    "div",
    {},
    h("p", { class: "muted", role: "status" }, "Verifying the chain…"),
  );
  const verifyButton = h("button", { type: "button" }, "Verify again");
  const runVerify = async () => {
    verifyButton.disabled = true;
    try {
      verifyBox.replaceChildren(verification(await api("/audit/verify")));
    } catch (error) {
      verifyBox.replaceChildren(
        h("p", { class: "error", role: "alert" }, `Verification failed: ${error.message}`),
      );
    } finally {
      verifyButton.disabled = false;
    }
  };
  verifyButton.addEventListener("click", runVerify);
  const inputs = {
    event_type: select(
      "event_type",
      [["", "All types"], ...TYPES.map((t) => [t, t.replaceAll("_", " ")])],
      state.event_type,
    ),
    actor: h("input", { name: "actor", value: state.actor, size: 12 }),
    subject_type: h("input", { name: "subject_type", value: state.subject_type, size: 10 }),
    subject_id: h("input", { name: "subject_id", value: state.subject_id, size: 14 }),
    outcome: h("input", { name: "outcome", value: state.outcome, size: 10 }),
    since: h("input", { name: "since", type: "datetime-local", value: state.since }),
    until: h("input", { name: "until", type: "datetime-local", value: state.until }),
    text: h("input", { name: "text", type: "search", value: state.text, size: 16 }),
  };
  const form = h(
    "form",
    { class: "filters", "aria-label": "Search the audit log" },
    field("Event type", inputs.event_type),
    field("Actor", inputs.actor),
    field("Subject type", inputs.subject_type),
    field("Subject id", inputs.subject_id),
    field("Outcome", inputs.outcome),
    field("From (UTC)", inputs.since),
    field("Until (UTC)", inputs.until),
    field("Text in details", inputs.text, "Searches the events on this page."),
    h(
      "div",
      { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Search"),
    ),
  );
  const results = h("div", { id: "audit-results" });
  root.append(
    verifyBox,
    h("div", { class: "row-buttons after-card" }, verifyButton),
    h("h2", {}, "Events"),
    form,
    results,
  );

  async function load() {
    const page = await api("/audit/events", {
      query: {
        event_type: state.event_type,
        actor: state.actor,
        subject_type: state.subject_type,
        subject_id: state.subject_id,
        outcome: state.outcome,
        since: isoOrEmpty(state.since),
        until: isoOrEmpty(state.until),
        offset: state.offset,
        limit: 50,
      },
    });
    const needle = state.text.toLowerCase();
    const rows = needle
      ? page.items.filter((e) => JSON.stringify(e).toLowerCase().includes(needle))
      : page.items;
    results.replaceChildren(
      h(
        "p",
        { class: "summary", role: "status" },
        needle
          ? `${rows.length} of ${page.items.length} events on this page contain “${state.text}”.`
          : `${count(page)} events match.`,
      ),
      table({
        caption: "Audit events, newest first",
        columns: [
          { label: "Event", render: (e) => `#${e.id}` },
          { label: "When", render: (e) => when(e.occurred_at) },
          { key: "actor", label: "Actor" },
          { label: "Type", render: (e) => e.event_type.replaceAll("_", " ") },
          { label: "Subject", render: (e) => `${e.subject_type} ${e.subject_id}` },
          { key: "outcome", label: "Outcome" },
          {
            label: "Details",
            render: (e) =>
              h(
                "details",
                {},
                h("summary", {}, "Details", sr(` of event ${e.id}`)),
                facts(e.details),
                h("p", { class: "hash" }, `hash ${e.hash}`),
              ),
          },
        ],
        rows,
        empty: "No event matches.",
      }),
      pager(page, (offset) => {
        state.offset = offset;
        show();
      }),
    );
  }

  // After the first load: a failed request clears the rows (they no longer answer the
  // filter or page asked for) and says why.
  function show() {
    load().catch((error) => results.replaceChildren(errorBox(error)));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const [k, input] of Object.entries(inputs)) state[k] = input.value.trim();
    state.offset = 0;
    show();
  });
  await Promise.all([runVerify(), load()]);
}
