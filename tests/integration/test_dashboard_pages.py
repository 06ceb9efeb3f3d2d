"""The dashboard's pages in real Chromium against `finops serve`: sign-in, each role offered
what it may do and nothing more, numbers that match the database, filtering and sorting,
the audit chain's verification. Screenshots go to $DASHBOARD_SCREENSHOTS when it is set."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.core.database import session_scope
from backend.core.models import ActionRow, OpportunityRow, ResourceRow
from tests.support.dashboard_site import (
    EXTRA_RESOURCES,
    OTHER_ACCOUNT,
    PASSWORD,
    USERS,
    Site,
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


def money(value: float) -> str:
    return f"${value:,.2f}"  # what Intl.NumberFormat("en-US", USD) writes


def buttons(page: Any, pattern: str) -> Any:
    return page.get_by_role("button", name=re.compile(pattern))


def test_every_page_renders_for_the_administrator(site: Site) -> None:
    page = site.sign_in("ada")
    for link, name in PAGES:
        go(page, link, name)
        assert page.locator("h1").inner_text() == link
        assert page.locator("#nav a[aria-current='page']").inner_text() == link
        screenshot(page, name)
    go(page, "Overview", "overview")
    screenshot(page, "overview-full", full_page=True)
    assert site.js_errors(page) == []


# (user, actions offered for approval, roll back, engage the stop, disable a policy). Two
# actions wait: otto requested the scanned account's, april the other; nobody is offered
# their own, and neither a viewer nor an operator decides.
OFFERS = [
    ("vera", 0, False, False, False),
    ("otto", 0, False, True, True),
    ("april", 1, True, True, True),
    ("ada", 2, True, True, True),
]


@pytest.mark.parametrize(("user", "approvable", "decides", "engages", "disables"), OFFERS)
def test_each_role_is_offered_only_what_it_may_do(
    site: Site, user: str, approvable: int, decides: bool, engages: bool, disables: bool
) -> None:
    check = expect
    page = site.sign_in(user)
    check(page.locator("#who-name")).to_have_text(f"Signed in as {user} ({USERS[user].value})")
    go(page, "Approval queue", "approvals")
    check(buttons(page, r"^Approve action")).to_have_count(approvable)
    check(buttons(page, r"^Reject action")).to_have_count(approvable)
    if not decides:
        assert "can read the queue" in page.locator(".intro").inner_text()
    go(page, "Actions and runs", "actions")
    rollbacks = buttons(page, r"^Roll back (action|run)")
    assert (rollbacks.count() > 0) == decides
    go(page, "Emergency stop", "emergency")
    check(page.get_by_role("button", name="Engage emergency stop")).to_have_count(int(engages))
    check(page.get_by_role("button", name="Release emergency stop")).to_have_count(0)
    if not engages:
        assert "you are viewer" in page.locator("#stop-note").inner_text()
    go(page, "Policies", "policies")
    policies = page.locator("tbody tr").count()
    assert policies > 2
    check(buttons(page, r"^Disable policy")).to_have_count(policies if disables else 0)
    assert site.js_errors(page) == []


def test_sign_in_keeps_the_token_in_session_storage_and_sign_out_revokes_it(site: Site) -> None:
    page = site.browser.new_context(base_url=site.base).new_page()
    page.goto("/")  # redirected to the dashboard
    ready(page, "login")
    assert page.url.endswith("/dashboard/")
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    page.get_by_label("User name").fill("vera")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed: wrong user name or password.")
    page.get_by_label("Password").fill(PASSWORD.format("vera"))
    page.get_by_role("button", name="Sign in").click()
    ready(page, "overview")
    stored = json.loads(page.evaluate("sessionStorage.getItem('finops.session')"))
    assert stored["username"] == "vera" and stored["role"] == "viewer"
    assert stored["token"].startswith("fo_")
    assert page.evaluate("localStorage.length") == 0
    assert api_status(site, "/api/v1/auth/me", stored["token"]) == 200
    page.get_by_role("button", name="Sign out").click()
    ready(page, "login")
    expect(page.get_by_role("alert")).to_have_text("You are signed out.")
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('finops.session')") is None
    assert api_status(site, "/api/v1/auth/me", stored["token"]) == 401


def api_status(site: Site, path: str, token: str) -> int:
    request = urllib.request.Request(site.base + path)
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_overview_shows_the_numbers_in_the_database(site: Site) -> None:
    present = ResourceRow.gone_at.is_(None)
    with site.database(), session_scope() as session:
        total = session.scalar(select(func.sum(ResourceRow.monthly_cost)).where(present))
        by_kind = dict(
            session.execute(
                select(ResourceRow.kind, func.sum(ResourceRow.monthly_cost))
                .where(present)
                .group_by(ResourceRow.kind)
            ).all()
        )
        estimated = session.scalar(
            select(func.sum(OpportunityRow.estimated_monthly_savings)).where(
                OpportunityRow.status == "open"
            )
        )
        succeeded = session.scalars(select(ActionRow).where(ActionRow.state == "succeeded"))
        realized = sum(
            a.realized_monthly_savings
            if a.realized_monthly_savings is not None
            else a.estimated_monthly_savings or 0
            for a in succeeded
        )
        waiting = session.scalar(select(func.count()).where(ActionRow.state == "awaiting_approval"))
    page = site.sign_in("vera")
    check = expect
    check(page.locator("#stat-cost .stat-value")).to_have_text(money(total))
    check(page.locator("#stat-estimated .stat-value")).to_have_text(money(estimated))
    check(page.locator("#stat-realized .stat-value")).to_have_text(money(realized))
    check(page.locator("#stat-waiting .stat-value")).to_have_text(str(waiting))
    check(page.locator("#stat-engine .stat-value")).to_have_text("running")
    # each kind's bar says its sum; a kind with nothing priced says so instead of $0.00
    figure = page.locator("figure", has=page.get_by_text("Cost by kind", exact=True))
    for kind, cost in by_kind.items():
        label = "unpriced" if cost is None else money(cost)
        assert figure.locator("svg text.label", has_text=re.compile(f"^{kind}$")).count() == 1
        assert figure.locator("svg text.value", has_text=re.compile(f"^{re.escape(label)}")).count()
    # the seeded second account: known numbers, its unpriced snapshot not counted as zero
    priced = sum(cost for *_, cost in EXTRA_RESOURCES if cost is not None)
    accounts = page.locator("figure", has=page.get_by_text("Cost by account", exact=True))
    accounts.get_by_text("Cost by account: the numbers").click()
    row = accounts.locator("tbody tr", has=page.locator("th", has_text=OTHER_ACCOUNT))
    check(row.locator("td").first).to_have_text(f"{money(priced)} + 1 unpriced")
    # every chart is an image with a title and a description
    for svg in page.locator("svg.chart").all():
        assert svg.get_attribute("role") == "img"
        assert svg.locator(":scope > title").text_content()
        assert svg.locator(":scope > desc").text_content()
    savings = page.locator("figure", has=page.get_by_text("Monthly savings by month", exact=True))
    assert savings.locator("svg rect").count() >= 3
    assert site.js_errors(page) == []


def test_opportunities_filter_sort_and_show_their_evidence(site: Site) -> None:
    page = site.sign_in("vera", "opportunities")
    check = expect
    page.get_by_label("Account").fill(OTHER_ACCOUNT)
    page.get_by_role("button", name="Apply filters").click()
    priced = sum(cost for *_, cost in EXTRA_RESOURCES if cost is not None)
    check(page.locator("#opportunity-summary")).to_have_text(
        f"4 opportunities, {money(priced)} estimated per month (1 could not be priced)"
    )
    rows = page.locator("#opportunity-results tbody tr")
    check(rows.first.locator("th")).to_contain_text("db-reporting-old")
    page.get_by_role("button", name="Savings / month").click()  # ascending; unpriced last
    header = page.locator("th", has=page.get_by_role("button", name="Savings / month"))
    check(header).to_have_attribute("aria-sort", "ascending")
    check(rows.first.locator("th")).to_contain_text("eipalloc-0unused0001")
    check(rows.last.locator("th")).to_contain_text("snap-0unpriced00001")
    page.locator("summary", has_text="db-reporting-old").click()
    evidence = page.locator("details[open]")
    check(evidence).to_contain_text("days_idle")
    check(evidence).to_contain_text("CPUUtilization.avg14d")
    page.get_by_label("Kind").select_option("rds")
    page.get_by_role("button", name="Apply filters").click()
    check(rows).to_have_count(1)
    page.get_by_role("button", name="Clear filters").click()
    check(page.get_by_label("Account")).to_have_value("")
    assert site.js_errors(page) == []


def test_the_audit_log_shows_the_chain_verification_and_is_searchable(site: Site) -> None:
    page = site.sign_in("ada", "audit")
    check = expect
    result = page.locator("#chain-verification")
    check(result).to_contain_text("Verified")
    with site.database():
        from backend.core.automation_audit_logger import AuditLogger

        report = AuditLogger().verify()
    assert report.ok
    check(result).to_contain_text(f"{report.checked} event(s) checked")
    page.get_by_label("Actor").fill("vera")
    page.get_by_label("Event type").select_option("login")
    page.get_by_role("button", name="Search").click()
    actors = page.locator("#audit-results tbody tr td:nth-child(3)")
    check(actors.first).to_have_text("vera")
    assert set(actors.all_inner_texts()) == {"vera"}
    found = actors.count()  # one page: the pager says so, and offers no next page
    pages = page.locator("#audit-results nav.pager")
    check(pages.get_by_role("status")).to_have_text(f"1\N{EN DASH}{found} of {found}")
    check(pages.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_label("Text in details").fill("no-such-text-anywhere")
    page.get_by_role("button", name="Search").click()
    check(page.locator("#audit-results .summary")).to_contain_text("0 of")
    page.get_by_role("button", name="Verify again").click()
    check(result).to_contain_text("Verified")
    assert site.js_errors(page) == []


def test_policies_say_what_they_do_with_mode_schedule_and_limits(site: Site) -> None:
    page = site.sign_in("otto", "policies")
    check = expect
    table = page.locator("table", has=page.locator("caption", has_text=" policies"))
    stop_idle = table.locator("tbody tr", has=page.locator("th", has_text="stop-idle"))
    check(stop_idle).to_contain_text("auto")
    check(stop_idle).to_contain_text("Medium risk")
    check(stop_idle).to_contain_text("Stop an instance")
    check(stop_idle).to_contain_text("with each scan")
    check(stop_idle).to_contain_text("Enabled")
    delete = table.locator("tbody tr", has=page.locator("th", has_text="delete-unattached"))
    check(delete).to_contain_text("approval")
    check(delete).to_contain_text("Destroys data")
    # a shipped policy: its description, cron schedule, limits and notice
    office = table.locator("tbody tr", has=page.locator("th", has_text="offhours-nonprod"))
    check(office).to_contain_text("0 19 * * 1-5 Europe/Paris")
    check(office).to_contain_text("actions per run")
    # an operator may disable (with a reason) but not enable: cancel leaves it as it was
    page.get_by_role("button", name="Disable policy stop-idle").click()
    dialog = page.get_by_role("dialog", name="Disable policy stop-idle?")
    check(dialog).to_be_visible()
    dialog.get_by_role("button", name="Disable").click()  # no reason yet: refused in place
    check(dialog.get_by_role("alert")).to_contain_text("is required")
    dialog.get_by_role("button", name="Cancel").click()
    check(dialog).to_be_hidden()
    check(stop_idle).to_contain_text("Enabled")
    assert site.js_errors(page) == []
