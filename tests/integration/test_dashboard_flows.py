"""What people do through the dashboard, in real Chromium against `finops serve` and a
simulated account (moto_server): an approver approves an action someone else requested (and
is not offered their own), the engine executes it in the account, the approver rolls it back
from the actions page; an operator engages the emergency stop and an administrator releases
it. Each change is confirmed in a dialog, and checked in the database and the account."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import AuditEventRow
from tests.integration import execution_support
from tests.support.dashboard_site import (
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


def row_of(page: Any, action_id: int, box: str = "#action-results") -> Any:
    """The action's row in a list (the actions page lists runs too, numbered alike)."""
    return page.locator(f"{box} tbody tr", has=page.locator("th", has_text=f"#{action_id} "))


def test_approve_then_execute_in_the_account_then_roll_back(site: Site) -> None:
    volume = site.account.loose_volume
    actions = actions_by_resource(site)
    theirs, own = actions[volume], actions["vol-0aprilsown00001"]
    assert (theirs.requested_by, theirs.state) == ("otto", "awaiting_approval")
    assert (own.requested_by, own.state) == ("april", "awaiting_approval")

    page = site.sign_in("april", "approvals")
    expect(page.get_by_role("button", name=f"Approve action {own.id}")).to_have_count(0)
    expect(row_of(page, own.id, "#waiting-results")).to_contain_text(
        "Your request: another approver decides"
    )
    page.get_by_role("button", name=f"Approve action {theirs.id}").click()
    dialog = page.get_by_role("dialog", name=f"Approve action {theirs.id}?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(volume)
    screenshot(page, "approve-dialog")
    dialog.get_by_label("Comment (optional, kept in the audit log)").fill("owner agreed")
    dialog.get_by_role("button", name="Approve").click()
    expect(dialog).to_be_hidden()
    ready(page, "approvals")
    expect(page.get_by_role("button", name=f"Approve action {theirs.id}")).to_have_count(0)
    approved = site.action(theirs.id)
    assert (approved.state, approved.approved_by) == ("approved", "april")
    with site.database(), session_scope() as session:
        comments = session.scalars(
            select(AuditEventRow).where(
                AuditEventRow.event_type == "approval", AuditEventRow.outcome == "commented"
            )
        ).all()
        assert [(e.actor, e.subject_id, e.details) for e in comments] == [
            ("april", str(theirs.id), {"comment": "owner agreed"})
        ]

    # The engine runs what is approved (as `finops apply --live` or a worker would).
    assert site.account.volume_exists(volume)
    with site.database():
        report = execution_support.engine().execute(dry_run=False)
    assert theirs.id in [o.action_id for o in report.outcomes if o.result == "succeeded"]
    assert not site.account.volume_exists(volume)
    snapshot = site.action(theirs.id).backup_ref
    assert snapshot and snapshot.startswith("snap-")

    go(page, "Actions and runs", "actions")
    row = row_of(page, theirs.id)
    expect(row).to_contain_text("Succeeded")
    row.get_by_role("button", name=f"Before / after of action {theirs.id}").click()
    before_after = page.locator("tr.detail-row table")
    expect(before_after).to_contain_text("Before")
    assert before_after.locator("tbody tr").count() > 0
    screenshot(page, "actions-before-after")
    row.get_by_role("button", name=f"Roll back action {theirs.id}").click()
    dialog = page.get_by_role("dialog", name=f"Roll back action {theirs.id}?")
    expect(dialog).to_contain_text("This changes the account now")
    dialog.get_by_role("button", name="Roll back").click()
    expect(dialog).to_be_hidden(timeout=60_000)
    ready(page, "actions")
    expect(row_of(page, theirs.id)).to_contain_text("Rolled back")
    assert site.action(theirs.id).state == "rolled_back"
    restored = [
        v
        for v in site.account.ec2().describe_volumes()["Volumes"]
        if v.get("SnapshotId") == snapshot
    ]
    assert len(restored) == 1  # recreated from its backup, in the account
    # the new volume's id is what the approver must act on (attach it): shown, not only
    # announced to screen readers
    outcome = page.locator("#action-outcome")
    expect(outcome).to_have_attribute("role", "status")
    expect(outcome).to_contain_text(f"Roll back of action {theirs.id}")
    expect(outcome).to_contain_text(restored[0]["VolumeId"])
    assert site.js_errors(page) == []


def test_emergency_stop_engaged_by_an_operator_and_released_by_an_administrator(
    site: Site,
) -> None:
    def stop_state() -> Any:
        with site.database():
            return EmergencyStop().state()

    otto = site.sign_in("otto", "emergency")
    reason = otto.get_by_label("Reason (shown to every worker, and audited)")
    reason.fill("cost spike under investigation")
    otto.get_by_role("button", name="Engage emergency stop").click()
    dialog = otto.get_by_role("dialog", name="Engage the emergency stop?")
    expect(dialog).to_contain_text("cost spike under investigation")
    dialog.get_by_role("button", name="Cancel").click()  # cancelled: nothing happens
    expect(dialog).to_be_hidden()
    assert not stop_state().engaged

    otto.get_by_role("button", name="Engage emergency stop").click()
    screenshot(otto, "emergency-confirm")
    dialog.get_by_role("button", name="Engage now").click()
    expect(dialog).to_be_hidden()
    ready(otto, "emergency")
    expect(otto.locator("#stop-state")).to_contain_text("Engaged")
    expect(otto.locator("#stop-banner")).to_contain_text("cost spike under investigation")
    expect(otto.get_by_role("button", name="Release emergency stop")).to_have_count(0)
    expect(otto.locator("#stop-note")).to_contain_text("Only an administrator can release")
    state = stop_state()
    assert (state.engaged, state.engaged_by) == (True, "otto")

    ada = site.sign_in("ada", "overview")
    expect(ada.locator("#stat-engine .stat-value")).to_have_text("Stopped")
    expect(ada.locator("#stop-banner")).to_be_visible()
    go(ada, "Emergency stop", "emergency")
    screenshot(ada, "emergency-engaged")
    ada.get_by_role("button", name="Release emergency stop").click()
    dialog = ada.get_by_role("dialog", name="Release the emergency stop?")
    expect(dialog).to_contain_text("engaged by otto")
    dialog.get_by_role("button", name="Release now").click()
    expect(dialog).to_be_hidden()
    ready(ada, "emergency")
    expect(ada.locator("#stop-state")).to_contain_text("Released")
    expect(ada.locator("#stop-banner")).to_be_hidden()
    state = stop_state()
    assert (state.engaged, state.released_by) == (False, "ada")
    assert site.js_errors(otto) == [] and site.js_errors(ada) == []
