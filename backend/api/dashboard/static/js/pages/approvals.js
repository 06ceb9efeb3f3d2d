// The approval queue: actions waiting for a person. Approve (with an optional comment) or
// reject (with a required one). Offered only to approvers and administrators, and never for
// an action the user requested (separation of duties: the API refuses it too).

import { api, can, session } from "../api.js";
import {
  badge,
  confirmDialog,
  count,
  errorBox,
  facts,
  h,
  money,
  pageHeading,
  pager,
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
  const expired = a.state === "approved"; // offered again only once its approval ran out
  const lapsed = expired ? ` Its approval by ${a.approved_by} expired.` : "";
  const approve = () =>
    confirmDialog({
      title: `Approve action ${a.id}${expired ? " again" : ""}?`,
      message: `${describe(a)}${lapsed} Once approved it runs at the next execution, after its safety checks pass again.`,
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
        "aria-label": `Approve action ${a.id}${expired ? " again" : ""}`,
      },
      expired ? "Approve again" : "Approve",
    ),
    expired
      ? null
      : h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: reject,
            "aria-label": `Reject action ${a.id}`,
          },
          "Reject",
        ),
  );
}

function verdict(a) {
  const v = a.safety_verdict || {};
  return h("details", {}, h("summary", {}, "Verdict", sr(` of action ${a.id}`)), facts(v));
}

// Where each table's pager is: the queue can be longer than a page, and an unpriced action
// (sorted last) must still be reachable.
const state = { waitingOffset: 0, approvedOffset: 0 };
const LIMIT = 50;

export async function render(root, { refresh }) {
  const intro = can("approver")
    ? "Approve or reject what the policies propose. Your own requests go to another approver."
    : `Your role (${session().role}) can read the queue; approvers and administrators decide.`;
  root.append(...pageHeading("Approval queue", intro));
  const again = () => refresh();
  const summary = h("p", { class: "summary", id: "queue-summary" });
  const waitingBox = h("div", { id: "waiting-results" });
  const approvedBox = h("div", { id: "approved-results" });
  root.append(summary, waitingBox, h("h2", {}, "Approved, waiting to run"), approvedBox);

  async function loadWaiting() {
    const waiting = await api("/actions", {
      query: {
        state: "awaiting_approval",
        sort: "-estimated_monthly_savings",
        offset: state.waitingOffset,
        limit: LIMIT,
      },
    });
    summary.textContent = `${count(waiting)} actions wait for approval.`;
    waitingBox.replaceChildren(
      table({
        caption: "Awaiting approval",
        columns: [
          { label: "Action", render: (a) => twoLines(`#${a.id} ${a.action}`, a.policy_name) },
          {
            label: "Resource",
            render: (a) =>
              twoLines(`${a.kind} ${a.resource_id}`, `${a.account_id} / ${a.region}`),
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
      pager(waiting, (offset) => {
        state.waitingOffset = offset;
        loadWaiting().catch((error) => waitingBox.replaceChildren(errorBox(error)));
      }),
    );
  }

  async function loadApproved() {
    const approved = await api("/actions", {
      query: {
        state: "approved",
        sort: "-updated_at",
        offset: state.approvedOffset,
        limit: LIMIT,
      },
    });
    approvedBox.replaceChildren(
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
          {
            label: "Decision",
            render: (a) =>
              a.approval_expired ? decide(a, again) : h("span", { class: "muted" }, "—"),
          },
        ],
        rows: approved.items,
        empty: "No approved action is waiting.",
      }),
      pager(approved, (offset) => {
        state.approvedOffset = offset;
        loadApproved().catch((error) => approvedBox.replaceChildren(errorBox(error)));
      }),
    );
  }

  await Promise.all([loadWaiting(), loadApproved()]);
}
