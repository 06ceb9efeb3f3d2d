// The single-page app: sign-in, the navigation, hash routes (#/overview, ...) and the
// emergency stop banner shown on every page.

import { api, clearSession, login, logout, session, whenSignedOut } from "./api.js";
import { errorBox, field, h, say } from "./dom.js";
import * as actions from "./pages/actions.js";
import * as approvals from "./pages/approvals.js";
import * as audit from "./pages/audit.js";
import * as emergency from "./pages/emergency.js";
import * as opportunities from "./pages/opportunities.js";
import * as overview from "./pages/overview.js";
import * as policies from "./pages/policies.js";

const PAGES = {
  overview: ["Overview", overview],
  opportunities: ["Opportunities", opportunities],
  approvals: ["Approval queue", approvals],
  actions: ["Actions and runs", actions],
  audit: ["Audit log", audit],
  policies: ["Policies", policies],
  emergency: ["Emergency stop", emergency],
};
const main = document.getElementById("main");
let notice = "";

function route() {
  const hash = window.location.hash;
  const name = hash.startsWith("#/") ? hash.slice(2).split("?")[0] : "overview";
  return PAGES[name] ? name : "overview";
}

let stopEngaged = null; // as last read: a poll that reads otherwise re-renders the page

async function refreshStop() {
  const banner = document.getElementById("stop-banner");
  try {
    const stop = await api("/emergency-stop");
    stopEngaged = stop.engaged;
    banner.hidden = !stop.engaged;
    banner.textContent = stop.engaged
      ? `Emergency stop engaged by ${stop.engaged_by}: ${stop.reason}. Nothing runs.`
      : "";
    return stop;
  } catch {
    banner.hidden = true;
    return null;
  }
}

function showChrome(signedIn) {
  const current = session();
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("who-name").textContent = signedIn
    ? `Signed in as ${current.username} (${current.role})`
    : "";
  if (!signedIn) document.getElementById("stop-banner").hidden = true;
}

function renderLogin() {
  showChrome(false);
  document.title = "Sign in — FinOps Automation";
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", {
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const problem = h("p", { class: "error", role: "alert" }, notice);
  notice = "";
  const form = h(
    "form",
    { class: "login card", "aria-labelledby": "page-title" },
    h("h1", { id: "page-title", tabindex: "-1" }, "Sign in"),
    h("p", {}, "Use your FinOps Automation user name and password."),
    field("User name", username),
    field("Password", password),
    problem,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      const who = await login(username.value.trim(), password.value);
      say(`Signed in as ${who.username}, ${who.role}.`);
      await render({ focus: true });
    } catch (error) {
      problem.textContent =
        error.status === 401 ? "Sign-in failed: wrong user name or password." : error.message;
      password.value = "";
      password.focus();
    }
  });
  main.replaceChildren(form);
  main.dataset.ready = "login";
  username.focus();
}

let rendering = 0;
/**
 * Render the current route. `focus`: move focus to the page's heading afterwards (after a
 * navigation, a sign-in, or a change that replaced the controls), so that keyboard and
 * screen reader users start at the new content; not on the first load of the document.
 */
async function render({ focus = false } = {}) {
  delete main.dataset.ready;
  if (!session() || !session().role) {
    renderLogin();
    return;
  }
  showChrome(true);
  const name = route();
  const [title, page] = PAGES[name];
  document.title = `${title} — FinOps Automation`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const mine = ++rendering;
  const container = h("div", { class: "page", dataset: { page: name } });
  main.replaceChildren(container);
  refreshStop();
  try {
    await page.render(container, { refresh: () => render({ focus: true }), refreshStop });
  } catch (error) {
    if (mine === rendering && session()) container.append(errorBox(error));
  }
  if (mine !== rendering) return;
  const heading = container.querySelector("h1");
  if (heading && focus && !document.querySelector("dialog[open]")) heading.focus();
  main.dataset.ready = name; // tests and scripts wait for this
}

/**
 * Someone else may engage or release the stop (the CLI, the API, another tab): read it again
 * every 15 s, when the window regains focus, and when an action was refused because of it.
 * When it changed, the pages that show it (the overview, the stop's own) render again, unless
 * a dialog is open.
 */
async function pollStop() {
  if (!session() || !session().role || document.hidden) return;
  const before = stopEngaged;
  const stop = await refreshStop();
  const shown = ["overview", "emergency"].includes(route());
  if (stop && before !== null && stop.engaged !== before && shown && main.dataset.ready) {
    if (!document.querySelector("dialog[open]")) render();
  }
}
const STOP_POLL_MS = 15_000;
window.setInterval(pollStop, STOP_POLL_MS);
window.addEventListener("focus", pollStop);
document.addEventListener("finops:stop-refused", pollStop);

whenSignedOut((message) => {
  notice = message;
  renderLogin();
});
document.getElementById("sign-out").addEventListener("click", async () => {
  await logout();
  clearSession();
  notice = "You are signed out.";
  renderLogin();
});
window.addEventListener("hashchange", () => {
  if (window.location.hash.startsWith("#/")) render({ focus: true });
});
render();
