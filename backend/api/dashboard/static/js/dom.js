// Small DOM helpers: elements built with textContent only (no HTML strings, so nothing from
// the API is ever parsed as markup), formatting, accessible tables, the confirmation dialog.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      element.textContent = value;
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** h("button", {class: "primary", onclick: f}, "Save") */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

let uid = 0;
export function newId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

const MONEY = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
export function money(value) {
  return value === null || value === undefined ? "unknown" : MONEY.format(value);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

export function titleCase(text) {
  const words = String(text).replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** A state or outcome as a badge whose colour and text both say it. */
export function badge(text, tone) {
  const kind =
    tone ||
    {
      succeeded: "ok",
      approved: "info",
      awaiting_approval: "warn",
      executing: "info",
      failed: "bad",
      blocked: "bad",
      rejected: "muted",
      rolled_back: "muted",
    }[text] ||
    "muted";
  return h("span", { class: `badge badge-${kind}` }, titleCase(text));
}

/** Text for screen readers only: a short visible label made unique in context. */
export function sr(text) {
  return h("span", { class: "visually-hidden" }, text);
}

/** A summary line and a muted second line in one cell. */
export function twoLines(first, second) {
  return [h("span", { class: "line" }, first), h("span", { class: "line muted" }, second)];
}

export function say(message) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  window.setTimeout(() => {
    region.textContent = message;
  }, 50);
}

export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

export function loading(what) {
  return h("p", { class: "muted", role: "status" }, `Loading ${what}…`);
}

/** A page heading that takes focus after navigation (for screen readers and the keyboard). */
export function pageHeading(text, intro) {
  return [
    h("h1", { tabindex: "-1", id: "page-title" }, text),
    intro ? h("p", { class: "intro" }, intro) : null,
  ];
}

/** A JSON document as a definition list (nested values as compact JSON). */
export function facts(doc) {
  const entries = Object.entries(doc || {});
  if (!entries.length) return h("p", { class: "muted" }, "none");
  return h(
    "dl",
    { class: "facts" },
    entries.map(([key, value]) => [
      h("dt", {}, key),
      h(
        "dd",
        {},
        typeof value === "object" && value !== null ? JSON.stringify(value) : String(value),
      ),
    ]),
  );
}

/**
 * A table. columns: [{key, label, render?(row), sort?: "api sort field", numeric?}].
 * With `sort` ("field" or "-field") and `onSort(field)`, sortable headers are buttons and the
 * current one carries aria-sort.
 */
export function table({ caption, columns, rows, sort, onSort, empty = "Nothing to show." }) {
  const field = sort ? sort.replace(/^-/, "") : null;
  const descending = Boolean(sort && sort.startsWith("-"));
  const head = columns.map((col) => {
    const attrs = { scope: "col", class: col.numeric ? "num" : null };
    if (col.sort && onSort) {
      const active = col.sort === field;
      attrs["aria-sort"] = active ? (descending ? "descending" : "ascending") : "none";
      const arrow = active ? (descending ? " ▼" : " ▲") : "";
      return h(
        "th",
        attrs,
        h(
          "button",
          { type: "button", class: "sort", onclick: () => onSort(col.sort) },
          col.label,
          h("span", { "aria-hidden": "true" }, arrow),
        ),
      );
    }
    return h("th", attrs, col.label);
  });
  const body = rows.length
    ? rows.map((row) =>
        h(
          "tr",
          {},
          columns.map((col, i) => {
            const content = col.render ? col.render(row) : row[col.key];
            const tag = i === 0 ? "th" : "td";
            return h(
              tag,
              { class: col.numeric ? "num" : null, scope: i === 0 ? "row" : null },
              content ?? "—",
            );
          }),
        ),
      )
    : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))];
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head)),
      h("tbody", {}, body),
    ),
  );
}

/** A Page's total as text: "10000+" when the API stopped counting at its cap. */
export function count(page) {
  return page.total_exact === false ? `${page.total}+` : String(page.total);
}

/** Previous / next for a Page answer (asked by offset); `go(offset)` loads another page.
 * Next is offered while the API says there is more (`next_cursor`), whatever the total. */
export function pager(page, go) {
  const first = page.items.length ? page.offset + 1 : 0;
  const shown = page.items.length ? page.offset + page.items.length : 0;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h(
      "button",
      {
        type: "button",
        disabled: page.offset === 0,
        onclick: () => go(Math.max(0, page.offset - page.limit)),
      },
      "Previous page",
    ),
    h("span", { role: "status" }, `${first}–${shown} of ${count(page)}`),
    h(
      "button",
      {
        type: "button",
        disabled: page.next_cursor === null,
        onclick: () => go(page.offset + page.limit),
      },
      "Next page",
    ),
  );
}

/** A labelled form control: label + input/select/textarea with the same id. */
export function field(label, control, hint) {
  const id = control.id || newId("f");
  control.id = id;
  const parts = [h("label", { for: id }, label), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("span", { class: "hint", id: hintId }, hint));
  }
  return h("div", { class: "field" }, parts);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)),
  );
}

/**
 * Ask before doing something. Resolves to the text typed (or "" without a text field) when
 * confirmed, null when cancelled. `act(text)` runs inside the dialog: if it throws, the error
 * shows there and the dialog stays open.
 */
export function confirmDialog({ title, message, confirmLabel, danger = false, text, act }) {
  const dialog = document.getElementById("confirm");
  const form = dialog.querySelector("form");
  const area = dialog.querySelector("#confirm-text");
  const problem = dialog.querySelector("#confirm-error");
  const ok = dialog.querySelector("#confirm-ok");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-message").textContent = message;
  dialog.querySelector("#confirm-field").hidden = !text;
  dialog.querySelector("#confirm-label").textContent = text ? text.label : "Comment";
  area.value = "";
  area.setAttribute("aria-required", text && text.required ? "true" : "false");
  problem.textContent = "";
  ok.textContent = confirmLabel;
  ok.className = danger ? "danger" : "primary";
  ok.disabled = false;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const finish = (result) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    };
    const onClose = () => finish(null);
    const onSubmit = async (event) => {
      event.preventDefault();
      if (event.submitter && event.submitter.value === "cancel") return finish(null);
      const value = area.value.trim();
      if (text && text.required && !value) {
        problem.textContent = `${text.label} is required.`;
        area.focus();
        return undefined;
      }
      ok.disabled = true;
      try {
        if (act) await act(value);
        return finish(value);
      } catch (error) {
        problem.textContent = error.message;
        ok.disabled = false;
        // refused because the stop is engaged: the banner must say so now (main.js listens)
        if (String(error.problem?.type).endsWith(":emergency-stop-engaged")) {
          document.dispatchEvent(new CustomEvent("finops:stop-refused"));
        }
        return undefined;
      }
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    (text ? area : dialog.querySelector("#confirm-cancel")).focus();
  });
}
