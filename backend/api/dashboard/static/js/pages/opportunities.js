// Opportunities: what the policies found, filterable and sortable, with the evidence and the
// estimated savings of each.

import { api } from "../api.js";
import {
  errorBox,
  facts,
  field,
  h,
  money,
  pageHeading,
  pager,
  select,
  sr,
  table,
  twoLines,
  when,
} from "../dom.js";

const KINDS = ["", "ec2", "ebs", "ebs-snapshot", "ami", "elastic-ip", "elb", "rds"];
const state = {
  status: "open",
  policy: "",
  kind: "",
  account: "",
  region: "",
  min_savings: "",
  sort: "-estimated_monthly_savings",
  offset: 0,
};

function evidence(row) {
  return h(
    "details",
    { class: "evidence" },
    h("summary", {}, "Evidence", sr(` for ${row.resource_id}`)),
    h("h3", {}, "Evidence"),
    facts(row.evidence),
    h("h3", {}, "Action parameters"),
    facts(row.params),
    row.savings_unknown ? h("p", {}, `Savings unknown: ${row.savings_unknown}`) : null,
  );
}

export async function render(root) {
  root.append(
    ...pageHeading(
      "Opportunities",
      "What the policies found, with the evidence and the estimated monthly savings.",
    ),
  );
  const policies = await api("/policies", { query: { limit: 500 } }).catch(() => ({ items: [] }));
  const inputs = {
    status: select(
      "status",
      [
        ["open", "Open"],
        ["resolved", "Resolved"],
      ],
      state.status,
    ),
    policy: select(
      "policy",
      [["", "All policies"], ...policies.items.map((p) => [p.name, p.name])],
      state.policy,
    ),
    kind: select(
      "kind",
      KINDS.map((k) => [k, k || "All kinds"]),
      state.kind,
    ),
    account: h("input", {
      name: "account",
      value: state.account,
      inputmode: "numeric",
      pattern: "[0-9]{12}",
      size: 14,
    }),
    region: h("input", { name: "region", value: state.region, size: 12 }),
    min_savings: h("input", {
      name: "min_savings",
      type: "number",
      min: 0,
      step: "0.01",
      value: state.min_savings,
      size: 8,
    }),
  };
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter opportunities" },
    field("Status", inputs.status),
    field("Policy", inputs.policy),
    field("Kind", inputs.kind),
    field("Account", inputs.account),
    field("Region", inputs.region),
    field("Minimum savings ($/month)", inputs.min_savings),
    h(
      "div",
      { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("button", { type: "reset" }, "Clear filters"),
    ),
  );
  const results = h("div", { id: "opportunity-results", "aria-live": "polite" });
  root.append(form, results);

  async function load() {
    const page = await api("/opportunities", {
      query: {
        ...Object.fromEntries(Object.keys(inputs).map((k) => [k, state[k]])),
        sort: state.sort,
        offset: state.offset,
        limit: 50,
        include_totals: true, // the sums over every match, shown above the table
      },
    });
    const sortBy = (fieldName) => {
      state.sort = state.sort === `-${fieldName}` ? fieldName : `-${fieldName}`;
      state.offset = 0;
      show();
    };
    results.replaceChildren(
      h(
        "p",
        { class: "summary", id: "opportunity-summary" },
        `${page.total} opportunities, ${money(page.total_estimated_monthly_savings)} estimated per month`,
        page.savings_unknown ? ` (${page.savings_unknown} could not be priced)` : "",
      ),
      table({
        caption: "Opportunities",
        sort: state.sort,
        onSort: sortBy,
        columns: [
          { label: "Resource", render: (r) => twoLines(r.resource_id, r.kind) },
          { key: "policy_name", label: "Policy", sort: "policy" },
          { key: "action", label: "Action" },
          { label: "Account / region", render: (r) => twoLines(r.account_id, r.region) },
          {
            label: "Savings / month",
            numeric: true,
            sort: "estimated_monthly_savings",
            render: (r) => money(r.estimated_monthly_savings),
          },
          { label: "First found", sort: "first_found", render: (r) => when(r.first_found) },
          { label: "Evidence", render: evidence },
        ],
        rows: page.items,
        empty: "No opportunity matches these filters.",
      }),
      pager(page, (offset) => {
        state.offset = offset;
        show();
      }),
    );
  }

  // After the first load: a failed request clears the rows (they no longer answer the
  // filter, sort or page asked for) and says why.
  function show() {
    load().catch((error) => results.replaceChildren(errorBox(error)));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const [k, input] of Object.entries(inputs)) state[k] = input.value.trim();
    state.offset = 0;
    show();
  });
  form.addEventListener("reset", (event) => {
    event.preventDefault();
    for (const [k, input] of Object.entries(inputs)) input.value = k === "status" ? "open" : "";
    form.requestSubmit();
  });
  await load();
}
