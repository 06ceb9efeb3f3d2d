// The approval queue: actions waiting for a person. Approve (with an optional comment) or
// reject (with a required one). Offered only to approvers and administrators, and never for
// an action the user requested (separation of duties: the API refuses it too).

import { api, can, session } from "../api.js";
import {
  badge,
  confirmDialog,
  count,
  facts,
  h,
  money,
  pageHeading,
  say,
  sr,
  table,
  twoLines,
  when,
} from "../dom.js";

function describe(a) {
  const saving =
    a.estimated_monthly_savings === null
      ? "savings unknown"
      : `${money(a.estimated_monthly_savings)} per month`;
  return `${a.action} ${a.kind} ${a.resource_id} in ${a.account_id} / ${a.region} (policy ${a.policy_name}, risk ${a.risk}, ${saving}), requested by ${a.requested_by}.`;
}

function decide(a, refresh) {
  const me = session().username;
  if (!can("approver")) return h("span", { class: "muted" }, "—");
  if (a.requested_by === me) {
    return h("span", { class: "muted own-request" }, "Your request: another approver decides");
  }
  const approve = () =>
    confirmDialog({
      title: `Approve action ${a.id}?`,
      message: `${describe(a)} Once approved it runs at the next execution, after its safety checks pass again.`,
      confirmLabel: "Approve",
      text: { label: "Comment (optional, kept in the audit log)", required: false },
      act: (comment) =>
        api(`/dashboard/actions/${a.id}/approve`, {
          method: "POST",
          body: { comment: comment || null },
        }),
    }).then((done) => {
      if (done !== null) {
        say(`Action ${a.id} approved.`);
        refresh();
      }
    });
  const reject = () =>
    confirmDialog({
      title: `Reject action ${a.id}?`,
      message: `${describe(a)} A rejected action never runs.`,
      confirmLabel: "Reject",
      danger: true,
      text: { label: "Why (required, kept in the audit log)", required: true },
      act: (comment) => api(`/actions/${a.id}/reject`, { method: "POST", body: { comment } }),
    }).then((done) => {
      if (done !== null) {
        say(`Action ${a.id} rejected.`);
        refresh();
      }
    });
  return h(
    "div",
    { class: "row-buttons" },
    h(
      "button",
      {
        type: "button",
        class: "primary",
        onclick: approve,
        "aria-label": `Approve action ${a.id}`,
      },
      "Approve",
    ),
    h(
      "button",
      { type: "button", class: "danger", onclick: reject, "aria-label": `Reject action ${a.id}` },
      "Reject",
    ),
  );
}

function verdict(a) {
  const v = a.safety_verdict || {};
  return h("details", {}, h("summary", {}, "Verdict", sr(` of action ${a.id}`)), facts(v));
}

export async function render(root, { refresh }) {
  const intro = can("approver")
    ? "Approve or reject what the policies propose. Your own requests go to another approver."
    : `Your role (${session().role}) can read the queue; approvers and administrators decide.`;
  root.append(...pageHeading("Approval queue", intro));
  const [waiting, approved] = await Promise.all([
    api("/actions", {
      query: { state: "awaiting_approval", sort: "-estimated_monthly_savings", limit: 200 },
    }),
    api("/actions", { query: { state: "approved", sort: "-updated_at", limit: 50 } }),
  ]);
  const again = () => refresh();
  root.append(
    h(
      "p",
      { class: "summary", id: "queue-summary" },
      `${count(waiting)} actions wait for approval.`,
    ),
    table({
      caption: "Awaiting approval",
      columns: [
        { label: "Action", render: (a) => twoLines(`#${a.id} ${a.action}`, a.policy_name) },
        {
          label: "Resource",
          render: (a) => twoLines(`${a.kind} ${a.resource_id}`, `${a.account_id} / ${a.region}`),
        },
        {
          label: "Risk",
          render: (a) =>
            badge(a.risk, a.risk === "high" ? "bad" : a.risk === "low" ? "ok" : "warn"),
        },
        {
          label: "Savings / month",
          numeric: true,
          render: (a) => money(a.estimated_monthly_savings),
        },
        { key: "requested_by", label: "Requested by" },
        { label: "Since", render: (a) => when(a.created_at) },
        { label: "Safety", render: verdict },
        { label: "Decision", render: (a) => decide(a, again) },
      ],
      rows: waiting.items,
      empty: "The queue is empty.",
    }),
    h("h2", {}, "Approved, waiting to run"),
    table({
      caption: "Approved actions",
      columns: [
        { label: "Action", render: (a) => `#${a.id} ${a.action}` },
        { label: "Resource", render: (a) => `${a.kind} ${a.resource_id}` },
        { key: "policy_name", label: "Policy" },
        { key: "approved_by", label: "Approved by" },
        {
          label: "Approval expires",
          render: (a) =>
            a.approval_expired ? badge("expired", "bad") : when(a.approval_expires_at),
        },
        {
          label: "Savings / month",
          numeric: true,
          render: (a) => money(a.estimated_monthly_savings),
        },
      ],
      rows: approved.items,
      empty: "No approved action is waiting.",
    }),
  );
}
