"""The dashboard's end-to-end setup (this module holds no tests): a simulated account on a
moto_server, scanned and planned into a SQLite database with extra rows of known value,
users with passwords, `finops serve` as a real process, and Debian's chromium driven by
Playwright (never `playwright install`: nothing is downloaded).

`running_dashboard()` makes all of it once per test module; `Site.sign_in(user)` opens a
1366x768 page signed in through the login form.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.api.accounts import create_user
from backend.api.security import Role
from backend.config import reset_settings_cache
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import dispose_engines, session_scope
from backend.core.models import ActionRow, ActionRunRow
from backend.core.types import utcnow
from tests.integration import execution_support
from tests.integration.execution_support import Account
from tests.support.api_client import seed_action, seed_opportunity, seed_resource
from tests.support.servers import free_port, moto_server_process, wait_http

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")  # Debian's package
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}
FINOPS = Path(sys.executable).with_name("finops")
USERS = {
    "vera": Role.VIEWER,
    "otto": Role.OPERATOR,
    "april": Role.APPROVER,
    "abe": Role.APPROVER,
    "ada": Role.ADMINISTRATOR,
}
PASSWORD = "dashboard-pass-{}"  # at least 12 characters
OTHER_ACCOUNT = "222222222222"
# (kind, region, resource id, monthly cost or None when unpriced), in OTHER_ACCOUNT
EXTRA_RESOURCES = [
    ("rds", "eu-west-1", "db-reporting-old", 812.4),
    ("ec2", "eu-west-1", "i-0batchworker0001", 140.16),
    ("elastic-ip", "eu-west-1", "eipalloc-0unused0001", 3.6),
    ("ebs-snapshot", "eu-west-1", "snap-0unpriced00001", None),
]
# A directory: the tests save each page there (docs/screenshots for the docs). Not FINOPS_:
# the autouse fixture clears those.
SCREENSHOTS_ENV = "DASHBOARD_SCREENSHOTS"
SHIPPED_POLICIES = [Path(__file__).parents[2] / "policies" / n for n in ("ebs.yml", "ec2.yml")]


def playwright_or_skip() -> Any:
    """The sync API, or a skip that says what is missing (never downloads a browser)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a failure
            pytest.fail(f"no chromium at {CHROMIUM} on CI: apt-get install -y chromium")
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (requirements-dev.lock pins it)")
    return sync_playwright


@dataclass
class Site:
    base: str
    env: dict[str, str]
    account: Account
    browser: Any
    errors: dict[int, list[str]] = field(default_factory=dict)

    def database(self) -> Any:
        """This process pointed at the site's database and account, for seeding and checks."""
        return pointed_at(self.env)

    def sign_in(self, user: str, route: str = "overview") -> Any:
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.base)
        page = context.new_page()
        errors = self.errors.setdefault(id(page), [])
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"/dashboard/#/{route}")
        ready(page, "login")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(PASSWORD.format(user))
        page.get_by_role("button", name="Sign in").click()
        ready(page, route)
        return page

    def js_errors(self, page: Any) -> list[str]:
        return self.errors.get(id(page), [])

    def action(self, action_id: int) -> ActionRow:
        with self.database(), session_scope() as session:
            row = session.get(ActionRow, action_id)
            assert row is not None
            session.expunge(row)
            return row


@contextmanager
def pointed_at(env: dict[str, str]) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            if name.startswith(("FINOPS_", "AWS_", "DATABASE_URL")):
                mp.setenv(name, value)
        reset_settings_cache()
        try:
            yield
        finally:
            reset_settings_cache()


def ready(page: Any, name: str) -> None:
    """Wait until the single-page app says that page has rendered."""
    page.locator(f"main[data-ready='{name}']").wait_for(timeout=30_000)


def go(page: Any, link: str, name: str) -> None:
    """Follow a navigation link, as a person would, and wait for the page."""
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name=link).click()
    ready(page, name)


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=full_page)


def _seed_extra(account: Account) -> None:
    """Rows of known value beside the scanned account: another account and region, past
    months' savings, and an action that approver april requested herself."""
    now = utcnow()
    for i, (kind, region, rid, cost) in enumerate(EXTRA_RESOURCES):
        pk = seed_resource(
            account_id=OTHER_ACCOUNT,
            region=region,
            kind=kind,
            resource_id=rid,
            state="available" if kind != "ec2" else "running",
            attributes={},
            monthly_cost=cost,
            cost_unknown=None if cost is not None else "no price for this snapshot tier",
        )
        seed_opportunity(
            pk,
            policy_name=f"idle-{kind}",
            action="stop" if kind in ("ec2", "rds") else "delete",
            estimated_monthly_savings=cost,
            savings_unknown=None if cost is not None else "unpriced resource",
            evidence={"CPUUtilization.avg14d": 0.8 + i, "days_idle": 30 + i},
            first_found=now - dt.timedelta(days=31 * i),
        )
    with session_scope() as session:
        run = ActionRunRow(
            started_at=now - dt.timedelta(days=62),
            finished_at=now - dt.timedelta(days=62),
            status="finished",
            triggered_by="scheduler",
            dry_run=False,
            summary={"succeeded": 2},
        )
        session.add(run)
        session.flush()
        run_id = run.id
    for months, saving in ((2, 96.0), (1, 41.25)):
        when = now - dt.timedelta(days=31 * months)
        seed_action(
            policy_name="idle-ec2",
            account_id=OTHER_ACCOUNT,
            region="eu-west-1",
            kind="ec2",
            resource_id=f"i-0nightly{months}00000001",
            action="stop",
            state="succeeded",
            requested_by="scheduler",
            approved_by="abe",
            estimated_monthly_savings=saving,
            realized_monthly_savings=saving if months == 2 else None,
            pre_state={"state": "running"},
            post_state={"state": "stopped"},
            run_id=run_id,
            created_at=when,
            updated_at=when,
            finished_at=when,
        )
    seed_action(  # april's own request: she must not be offered it
        policy_name="delete-unattached",
        account_id=OTHER_ACCOUNT,
        region="eu-west-1",
        resource_id="vol-0aprilsown00001",
        requested_by="april",
        estimated_monthly_savings=12.5,
    )


def _seed(endpoint: str) -> Account:
    account = execution_support.seed(endpoint)
    execution_support.scan_and_plan(requested_by="otto")
    with session_scope() as session:
        for name, role in USERS.items():
            create_user(
                session,
                name,
                role,
                actor="test",
                audit=AuditLogger(),
                password=PASSWORD.format(name),
            )
    _seed_extra(account)
    return account


def _environment(tmp: Path, database: str, moto: str) -> dict[str, str]:
    pack = tmp / "pack"
    pack.mkdir(exist_ok=True)
    (pack / "pack.yml").write_text(execution_support.PACK)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FINOPS_", "AWS_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {
        **clean,
        "DATABASE_URL": database,
        "FINOPS_DATA_DIR": str(tmp / "data"),
        # the test pack, and two of the shipped files: what the policies page shows
        "FINOPS_POLICY_PATHS": ",".join([str(pack), *map(str, SHIPPED_POLICIES)]),
        "FINOPS_REGIONS": "us-east-1",
        # a four-instance account: one action is 25% of the fleet, over the 10% default
        "FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN": "50",
        "FINOPS_RUNBOOK_ECHO": "0",
        "AWS_ENDPOINT_URL": moto,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def running_dashboard(tmp: Path) -> Iterator[Site]:
    sync_playwright = playwright_or_skip()
    with moto_server_process() as moto:
        env = _environment(tmp, f"sqlite:///{tmp / 'dashboard.sqlite'}", moto)
        with pointed_at(env):
            account = _seed(moto)
        dispose_engines()
        port = free_port()
        log = tmp / "serve.log"  # a file, not a pipe: a full pipe would block the server
        with log.open("w") as sink:
            server = subprocess.Popen(
                [str(FINOPS), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=tmp,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/health/live", timeout=60)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    yield Site(f"http://127.0.0.1:{port}", env, account, browser)
                finally:
                    browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
            dispose_engines()
        output = log.read_text()
        assert "Traceback" not in output, output


def actions_by_resource(site: Site) -> dict[str, ActionRow]:
    with site.database(), session_scope() as session:
        rows = {r.resource_id: r for r in session.scalars(select(ActionRow))}
        session.expunge_all()
        return rows
