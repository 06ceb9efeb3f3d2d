"""The dashboard's accessibility, in real Chromium against `finops serve`: keyboard-only use
reaches the main controls in order with a visible focus ring; an axe-like check of every
page (labels, accessible names, titled charts, unique ids, one h1); text contrast at WCAG AA;
no horizontal scrolling at 1366x768."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.dashboard_site import (
    PASSWORD,
    VIEWPORT,
    Site,
    actions_by_resource,
    go,
    ready,
    running_dashboard,
    screenshot,
)

pytestmark = pytest.mark.moto_server
expect = pytest.importorskip(
    "playwright.sync_api", reason="requirements-dev.lock pins playwright"
).expect
PAGES = [
    ("Overview", "overview"),
    ("Opportunities", "opportunities"),
    ("Approval queue", "approvals"),
    ("Actions and runs", "actions"),
    ("Audit log", "audit"),
    ("Policies", "policies"),
    ("Emergency stop", "emergency"),
]
NAV = ["Skip to content", "Sign out", *(link for link, _ in PAGES)]

# The focused element: tag, accessible name (aria-label, label, or text) and whether a focus
# indicator is drawn (an outline at least 2px wide, or a box shadow).
FOCUSED = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const label = el.labels && el.labels.length ? el.labels[0].textContent : "";
  const text = el.cloneNode(true);
  for (const hidden of text.querySelectorAll?.("[aria-hidden=true]") || []) hidden.remove();
  const name = (el.getAttribute("aria-label") || label || text.textContent || "").trim();
  const ring = (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2)
    || style.boxShadow !== "none";
  return { tag: el.tagName, id: el.id, name: name.replace(/\\s+/g, " "), ring };
}"""

# An axe-like pass over the rendered document; returns the problems found.
RULES = """() => {
  const problems = [];
  const byId = (ids) => (ids || "").split(/\\s+/).filter(Boolean)
    .map((id) => document.getElementById(id)?.textContent || "").join(" ").trim();
  const named = (el) => (el.getAttribute("aria-label") || byId(el.getAttribute("aria-labelledby"))
    || el.textContent || "").trim();
  const where = (el) => el.outerHTML.slice(0, 90);
  if (!document.documentElement.lang) problems.push("the document has no lang");
  const h1 = document.querySelectorAll("main h1").length;
  if (h1 !== 1) problems.push(`${h1} h1 elements in main`);
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const labelled = (el.labels && el.labels.length && el.labels[0].textContent.trim())
      || el.getAttribute("aria-label") || byId(el.getAttribute("aria-labelledby"));
    if (!labelled) problems.push(`control without a label: ${where(el)}`);
  }
  for (const el of document.querySelectorAll("button, a[href], summary")) {
    if (!named(el)) problems.push(`no accessible name: ${where(el)}`);
  }
  for (const el of document.querySelectorAll("div[onclick], span[onclick], [role=button]")) {
    problems.push(`a clickable non-button: ${where(el)}`);
  }
  for (const svg of document.querySelectorAll("svg")) {
    if (svg.closest("[aria-hidden=true]")) continue;
    const title = svg.querySelector(":scope > title");
    if (!title || !title.textContent.trim()) problems.push(`svg without a title: ${where(svg)}`);
    if (svg.getAttribute("role") !== "img") problems.push(`svg without role=img: ${where(svg)}`);
  }
  for (const img of document.querySelectorAll("img:not([alt])")) problems.push(where(img));
  for (const table of document.querySelectorAll("table")) {
    if (!table.querySelector("caption")?.textContent.trim()) problems.push(where(table));
  }
  for (const dialog of document.querySelectorAll("dialog")) {
    if (!byId(dialog.getAttribute("aria-labelledby"))) problems.push("a dialog without a name");
  }
  const seen = new Set();
  for (const el of document.querySelectorAll("[id]")) {
    if (seen.has(el.id)) problems.push(`duplicate id ${el.id}`);
    seen.add(el.id);
  }
  for (const attr of ["aria-labelledby", "aria-describedby", "aria-controls"]) {
    for (const el of document.querySelectorAll(`[${attr}]`)) {
      for (const id of el.getAttribute(attr).split(/\\s+/)) {
        if (!document.getElementById(id)) problems.push(`${attr} names a missing id ${id}`);
      }
    }
  }
  for (const el of document.querySelectorAll("[tabindex]")) {
    if (Number(el.getAttribute("tabindex")) > 0) problems.push(`positive tabindex: ${where(el)}`);
  }
  return problems;
}"""

# WCAG 2 contrast of every visible text (4.5:1, or 3:1 for large text) against the first
# opaque background behind it, and of chart marks (3:1) against the chart's background.
CONTRAST = """() => {
  const parse = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c || "");
    if (!m) return null;
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map(parseFloat);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const ratio = (x, y) => {
    const [hi, lo] = [lum(x), lum(y)].sort((a, b) => b - a);
    return (hi + 0.05) / (lo + 0.05);
  };
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const problems = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || !el.getClientRects().length) continue;
    if (el.closest(".visually-hidden, [hidden], noscript, title, desc, button:disabled")) continue;
    const style = getComputedStyle(el);
    const svg = el instanceof SVGElement;
    const fg = parse(svg ? style.fill : style.color);
    const bg = behind(svg ? el.closest("svg").parentElement : el);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (parseInt(style.fontWeight, 10) >= 700 && size >= 18.66);
    const need = large ? 3 : 4.5;
    const got = ratio(fg, bg);
    if (got < need) {
      const text = node.textContent.trim().slice(0, 40);
      problems.push(`${got.toFixed(2)}:1 < ${need}:1 for "${text}"`);
    }
  }
  for (const mark of document.querySelectorAll("svg rect[fill]")) {
    const fill = mark.getAttribute("fill");
    const rgb = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(fill);
    const got = ratio({ r: parseInt(rgb[1], 16), g: parseInt(rgb[2], 16), b: parseInt(rgb[3], 16) },
      behind(mark.closest("svg").parentElement));
    if (got < 3) problems.push(`chart mark ${fill}: ${got.toFixed(2)}:1 < 3:1`);
  }
  return problems;
}"""

# Nothing needs horizontal scrolling at the viewport's width: not the page, not a table.
OVERFLOW = """() => {
  const wide = [];
  if (document.documentElement.scrollWidth > window.innerWidth) wide.push("the page");
  for (const box of document.querySelectorAll(".table-wrap")) {
    if (box.scrollWidth > box.clientWidth + 1) wide.push(box.querySelector("caption").textContent);
  }
  return wide;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


def focused(page: Any) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(FOCUSED)
    return found


def tab_to(page: Any, name: str, key: str = "Tab", limit: int = 80) -> dict[str, Any]:
    """Press Tab (or Shift+Tab) until the named control has the focus; each stop must show
    a focus ring."""
    for _ in range(limit):
        page.keyboard.press(key)
        now = focused(page)
        assert now["ring"], f"no visible focus on {now}"
        if now["name"] == name:
            return now
    raise AssertionError(f"{name!r} not reached with {key} in {limit} presses")


def test_keyboard_alone_signs_in_navigates_and_reaches_the_main_controls(site: Site) -> None:
    waiting = actions_by_resource(site)[site.account.loose_volume]
    page = site.browser.new_context(viewport=VIEWPORT, base_url=site.base).new_page()
    page.goto("/dashboard/#/approvals")
    ready(page, "login")
    screenshot(page, "login")
    assert focused(page)["name"] == "User name"
    page.keyboard.type("april")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD.format("april"))
    page.keyboard.press("Enter")
    ready(page, "approvals")
    assert focused(page)["id"] == "page-title"  # the new page's heading
    assert focused(page)["name"] == "Approval queue"

    # From the top: the skip link first, then the header and the navigation, in order.
    page.reload()
    ready(page, "approvals")
    order = [tab_to(page, NAV[0], limit=1)["name"]]
    for _ in NAV[1:]:
        page.keyboard.press("Tab")
        assert focused(page)["ring"]
        order.append(focused(page)["name"])
    assert order == NAV
    tab_to(page, "Skip to content", key="Shift+Tab")
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    # A decision: the approve button opens the dialog on its comment; Escape cancels and
    # gives the focus back to the button; nothing was approved.
    tab_to(page, f"Approve action {waiting.id}")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=f"Approve action {waiting.id}?")
    expect(dialog).to_be_visible()
    assert focused(page)["name"] == "Comment (optional, kept in the audit log)"
    page.keyboard.press("Tab")
    assert focused(page)["name"] == "Cancel"
    page.keyboard.press("Tab")
    assert focused(page)["name"] == "Approve"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert focused(page)["name"] == f"Approve action {waiting.id}"
    assert site.action(waiting.id).state == "awaiting_approval"

    # The emergency stop by keyboard: a link, the reason, the button, the dialog's buttons.
    tab_to(page, "Emergency stop", key="Shift+Tab")
    page.keyboard.press("Enter")
    ready(page, "emergency")
    assert focused(page)["name"] == "Emergency stop"  # the page's heading
    tab_to(page, "Reason (shown to every worker, and audited)")
    page.keyboard.type("keyboard drill")
    tab_to(page, "Engage emergency stop")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Engage the emergency stop?")
    expect(dialog).to_be_visible()
    assert focused(page)["name"] == "Cancel"  # the safe choice has the focus
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("#stop-state")).to_contain_text("Released")

    # The opportunities' sortable headers are buttons too.
    tab_to(page, "Opportunities", key="Shift+Tab")
    page.keyboard.press("Enter")
    ready(page, "opportunities")
    tab_to(page, "Savings / month")
    page.keyboard.press("Enter")
    expect(page.locator("th[aria-sort='ascending']")).to_contain_text("Savings / month")
    assert site.js_errors(page) == []


@pytest.mark.parametrize("user", ["ada", "vera"])
def test_every_page_passes_the_basic_rules_contrast_and_fits_1366x768(
    site: Site, user: str
) -> None:
    page = site.sign_in(user)
    found: dict[str, list[str]] = {}
    for link, name in PAGES:
        go(page, link, name)
        for details in page.locator("main details").all()[:3]:
            details.locator("summary").click()  # what they hold is checked too
        problems = page.evaluate(RULES) + page.evaluate(CONTRAST) + page.evaluate(OVERFLOW)
        if problems:
            found[name] = problems
    if user == "ada":  # the confirmation dialog, open
        go(page, "Emergency stop", "emergency")
        page.get_by_label("Reason (shown to every worker, and audited)").fill("a check")
        page.get_by_role("button", name="Engage emergency stop").click()
        expect(page.get_by_role("dialog")).to_be_visible()
        problems = page.evaluate(RULES) + page.evaluate(CONTRAST)
        if problems:
            found["dialog"] = problems
        page.keyboard.press("Escape")
    page.get_by_role("button", name="Sign out").click()
    ready(page, "login")
    problems = page.evaluate(RULES) + page.evaluate(CONTRAST) + page.evaluate(OVERFLOW)
    if problems:
        found["login"] = problems
    assert found == {}
    assert site.js_errors(page) == []


def test_the_checks_find_what_they_look_for(site: Site) -> None:
    """The rules above are not vacuous: planted faults are each reported."""
    page = site.browser.new_context(viewport=VIEWPORT, base_url=site.base).new_page()
    page.goto("/dashboard/")
    ready(page, "login")
    page.evaluate(
        """() => {
          const form = document.querySelector("form");
          form.append(document.createElement("button"), document.createElement("input"));
          const faint = document.createElement("p");
          faint.textContent = "faint words";
          faint.style.color = "#b0b0b0";
          const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
          svg.setAttribute("width", "10");
          form.append(faint, svg);
          const wide = document.createElement("div");
          wide.style.width = "3000px";
          wide.textContent = "wide";
          document.body.append(wide);
        }"""
    )
    rules = " | ".join(page.evaluate(RULES))
    assert "no accessible name: <button>" in rules
    assert "control without a label: <input>" in rules
    assert "svg without a title" in rules
    assert 'for "faint words"' in " ".join(page.evaluate(CONTRAST))
    assert page.evaluate(OVERFLOW) == ["the page"]
