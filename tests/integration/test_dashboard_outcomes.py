"""What the dashboard says after something went wrong or changed elsewhere, in real Chromium
against `finops serve`: a failed or refused roll back or retry is shown as such (not only to
screen readers), a list request that fails clears the stale rows and says why, sorting goes
back to the first page, a long approval queue pages, an expired approval can be given again,
and the emergency stop engaged by someone else shows without reloading."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRunRow, OpportunityRow
from backend.core.types import utcnow
from tests.support.api_client import seed_action
from tests.support.dashboard_site import OTHER_ACCOUNT, Site, go, ready, running_dashboard

pytestmark = pytest.mark.moto_server
expect = pytest.importorskip(
    "playwright.sync_api", reason="requirements-dev.lock pins playwright"
).expect
QUEUED = 60  # more than one page (50) of the approval queue, and of actions (25)
UNPRICED = "vol-0unpricedlast01"  # sorted last in the queue: on its second page
PROBLEM = json.dumps(
    {"title": "Service unavailable", "status": 503, "detail": "the database cannot be reached"}
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        with running.database():
            for i in range(QUEUED):
                seed_action(
                    resource_id=UNPRICED if i == 0 else f"vol-0queued{i:08d}",
                    estimated_monthly_savings=None if i == 0 else float(i),
                    requested_by="otto",
                )
            with session_scope() as session:
                for i in range(60):  # more than one page (50) of the audit log
                    AuditLogger().record(
                        "test", subject_type="test", subject_id=i, actor="t", outcome="ok",
                        session=session,
                    )  # fmt: skip
        yield running


def row_of(scope: Any, action_id: int) -> Any:
    return scope.locator("tbody tr", has_text=f"#{action_id} ")


def pager_status(page: Any, box: str) -> Any:
    return page.locator(f"{box} nav.pager [role=status]")


def test_a_run_rollback_that_failed_is_shown_with_each_action_s_detail(site: Site) -> None:
    with site.database(), session_scope() as session:
        run = session.scalars(
            select(ActionRunRow.id).where(ActionRunRow.summary == {"succeeded": 2})
        ).one()
    page = site.sign_in("april", "actions")
    why = "cannot undo: instance i-0nightly100000001 no longer exists"
    answer = {
        "run_id": run,
        "outcomes": [{"action_id": 41, "result": "failed", "detail": why}],
        "rolled_back": 0,
        "failed": 1,
    }  # what the API answers (200) when an action's undo failed
    page.route(f"**/api/v1/runs/{run}/rollback", lambda route: route.fulfill(json=answer))
    page.get_by_role("button", name=f"Roll back run {run}").click()
    page.get_by_role("button", name="Roll back the run").click()
    ready(page, "actions")
    outcome = page.locator("#action-outcome")
    expect(outcome).to_be_visible()
    expect(outcome).to_have_attribute("role", "alert")
    expect(outcome).to_contain_text(f"Roll back of run {run}: 0 rolled back, 1 failed")
    expect(outcome.locator("li")).to_have_text([f"Failed Action 41: {why}"])
    assert site.js_errors(page) == []


def test_a_refused_retry_is_not_announced_as_done(site: Site) -> None:
    with site.database():
        failed = seed_action(
            state="failed", requested_by="otto", error="throttled", account_id=OTHER_ACCOUNT
        )
    page = site.sign_in("otto", "actions")
    why = "blocked: the instance is in an Auto Scaling group"
    page.route(
        f"**/api/v1/actions/{failed}/retry",
        lambda route: route.fulfill(json={"action_id": failed, "result": "blocked", "detail": why}),
    )
    row_of(page, failed).get_by_role("button", name=f"Retry action {failed}").click()
    page.get_by_role("dialog", name=f"Retry action {failed}?").get_by_role(
        "button", name="Retry"
    ).click()
    ready(page, "actions")
    outcome = page.locator("#action-outcome")
    expect(outcome).to_have_attribute("role", "alert")
    expect(outcome).to_contain_text(f"Retry of action {failed}")
    expect(outcome).to_contain_text(f"Blocked Action {failed}: {why}")
    expect(page.locator("#announcer")).not_to_contain_text("retried")
    assert site.js_errors(page) == []


def test_a_list_that_fails_after_the_first_load_clears_its_rows_and_says_why(
    site: Site,
) -> None:
    page = site.sign_in("ada", "actions")
    page.route("**/api/v1/actions?*state=failed*", lambda r: r.fulfill(status=503, body=PROBLEM))
    page.get_by_label("State").select_option("failed")
    page.get_by_role("button", name="Apply filters").click()
    results = page.locator("#action-results")
    expect(results.get_by_role("alert")).to_have_text("the database cannot be reached")
    expect(results.locator("tbody tr")).to_have_count(0)

    expect(page.get_by_label("State").locator("option[value=proposed]")).to_have_count(1)

    go(page, "Opportunities", "opportunities")
    page.route("**/api/v1/opportunities?*", lambda r: r.fulfill(status=503, body=PROBLEM))
    page.locator("#opportunity-results thead").get_by_role("button", name="First found").click()
    results = page.locator("#opportunity-results")
    expect(results.get_by_role("alert")).to_have_text("the database cannot be reached")
    expect(results.locator("tbody tr")).to_have_count(0)

    go(page, "Audit log", "audit")
    page.get_by_label("Event type").select_option("test")
    page.get_by_role("button", name="Search").click()
    expect(pager_status(page, "#audit-results")).to_have_text("1\N{EN DASH}50 of 60")
    page.route("**/api/v1/audit/events?*", lambda r: r.fulfill(status=503, body=PROBLEM))
    page.locator("#audit-results").get_by_role("button", name="Next page").click()
    results = page.locator("#audit-results")
    expect(results.get_by_role("alert")).to_have_text("the database cannot be reached")
    expect(results.locator("tbody tr")).to_have_count(0)


def test_sorting_the_actions_goes_back_to_the_first_page(site: Site) -> None:
    page = site.sign_in("vera", "actions")
    status = pager_status(page, "#action-results")
    page.locator("#action-results").get_by_role("button", name="Next page").click()
    expect(status).to_contain_text("26\N{EN DASH}50 of")
    page.locator("#action-results thead").get_by_role("button", name="Savings / month").click()
    expect(status).to_contain_text("1\N{EN DASH}25 of")
    header = page.locator("#action-results th[aria-sort=descending]")
    expect(header).to_contain_text("Savings / month")


def test_the_approval_queue_pages_to_its_last_unpriced_action(site: Site) -> None:
    page = site.sign_in("april", "approvals")
    waiting = QUEUED + 2  # the scanned account's volume and april's own request
    expect(page.locator("#queue-summary")).to_have_text(f"{waiting} actions wait for approval.")
    status = pager_status(page, "#waiting-results")
    expect(status).to_have_text(f"1\N{EN DASH}50 of {waiting}")
    expect(page.get_by_text(UNPRICED)).to_have_count(0)
    page.locator("#waiting-results").get_by_role("button", name="Next page").click()
    expect(status).to_have_text(f"51\N{EN DASH}{waiting} of {waiting}")
    row = page.locator("#waiting-results tbody tr", has=page.get_by_text(UNPRICED))
    expect(row).to_contain_text("unknown")
    expect(row.get_by_role("button", name="Approve action")).to_have_count(1)
    assert site.js_errors(page) == []


def test_an_expired_approval_can_be_given_again_but_not_by_its_requester(site: Site) -> None:
    past = utcnow() - dt.timedelta(hours=1)
    with site.database():
        expired = seed_action(
            state="approved", requested_by="otto", approved_by="abe", approval_expires_at=past
        )
        own = seed_action(
            state="approved", requested_by="april", approved_by="abe", approval_expires_at=past
        )
    page = site.sign_in("april", "approvals")
    approved = page.locator("#approved-results")
    expect(row_of(approved, own)).to_contain_text("Your request: another approver decides")
    expect(row_of(approved, expired)).to_contain_text("Expired")
    row_of(approved, expired).get_by_role("button", name=f"Approve action {expired} again").click()
    dialog = page.get_by_role("dialog", name=f"Approve action {expired} again?")
    expect(dialog).to_contain_text("Its approval by abe expired.")
    dialog.get_by_role("button", name="Approve").click()
    expect(dialog).to_be_hidden()
    ready(page, "approvals")
    row = site.action(expired)
    assert (row.state, row.approved_by) == ("approved", "april")
    assert row.approval_expires_at is not None
    assert row.approval_expires_at.replace(tzinfo=dt.UTC) > utcnow()
    expect(row_of(approved, expired)).not_to_contain_text("Expired")
    assert site.js_errors(page) == []


def test_the_overview_says_how_many_opportunities_are_not_priced(site: Site) -> None:
    with site.database(), session_scope() as session:
        unpriced = session.scalar(
            select(func.count())
            .select_from(OpportunityRow)
            .where(OpportunityRow.status == "open")
            .where(OpportunityRow.estimated_monthly_savings.is_(None))
        )
    assert unpriced  # the seeded snapshot, at least
    page = site.sign_in("vera")
    expect(page.locator("#stat-estimated .stat-note")).to_contain_text(
        f"open opportunities ({unpriced} not priced)"
    )


def test_a_stop_engaged_elsewhere_shows_without_a_reload(site: Site) -> None:
    page = site.sign_in("ada", "overview")
    expect(page.locator("#stop-banner")).to_be_hidden()
    with site.database():
        EmergencyStop().engage("runaway deletes (engaged from the CLI)", "otto")
    banner = page.locator("#stop-banner")
    expect(banner).to_contain_text("runaway deletes", timeout=20_000)  # the poll: 15 s
    expect(page.locator("#stat-engine .stat-value")).to_have_text("Stopped")
    with site.database():
        EmergencyStop().release("ada", is_admin=True)
    page.evaluate("window.dispatchEvent(new Event('focus'))")  # read again on focus
    expect(banner).to_be_hidden(timeout=5_000)
    expect(page.locator("#stat-engine .stat-value")).not_to_have_text("Stopped")

    # engaged by someone else between loading the form and sending it: said so
    otto = site.sign_in("otto", "emergency")
    with site.database():
        EmergencyStop().engage("cost spike", "april")
    otto.get_by_label("Reason (shown to every worker, and audited)").fill("me too")
    otto.get_by_role("button", name="Engage emergency stop").click()
    otto.get_by_role("button", name="Engage now").click()
    ready(otto, "emergency")
    expect(otto.locator("#stop-notice")).to_contain_text(
        'It was already engaged by april: "cost spike".'
    )
    with site.database():
        EmergencyStop().release("ada", is_admin=True)
    assert site.js_errors(page) == [] and site.js_errors(otto) == []


NOT_PERSISTED = json.dumps(
    {
        "type": "urn:finops:problem:emergency-stop-not-persisted",
        "title": "Service unavailable",
        "status": 503,
        "detail": "EMERGENCY STOP SET IN REDIS ONLY, NOT persisted in the database",
        "stop_key_set": True,
    }
)


def test_the_stop_page_offers_the_brake_when_the_state_cannot_be_read(site: Site) -> None:
    """The database down: the stop's state cannot be read, and the page still lets an
    operator engage, and shows what the API answered (the stop set in Redis only)."""
    page = site.sign_in("otto", "overview")

    def answer(route: Any) -> None:
        body = NOT_PERSISTED if route.request.method == "POST" else PROBLEM
        route.fulfill(status=503, body=body, content_type="application/problem+json")

    page.route("**/api/v1/emergency-stop", answer)
    go(page, "Emergency stop", "emergency")
    expect(page.locator("#stop-unknown")).to_contain_text(
        "The stop's state cannot be read: the database cannot be reached."
    )
    page.get_by_label("Reason (shown to every worker, and audited)").fill("database down")
    page.get_by_role("button", name="Engage emergency stop").click()
    dialog = page.get_by_role("dialog", name="Engage the emergency stop?")
    dialog.get_by_role("button", name="Engage now").click()
    expect(dialog.locator("#confirm-error")).to_have_text(
        "EMERGENCY STOP SET IN REDIS ONLY, NOT persisted in the database"
    )
    loads = "Failed to load resource"  # the browser's own line for each 503
    assert [e for e in site.js_errors(page) if loads not in e] == []
