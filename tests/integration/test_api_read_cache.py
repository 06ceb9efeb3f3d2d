"""The API's read caches on PostgreSQL (change_feed.py, token_cache.py, page_cache.py,
read_cache.py): what is answered from memory, and every change that must end it."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from httpx import Response
from sqlalchemy import text, update

from backend.api.change_feed import APPLICATION_NAME
from backend.core.database import session_scope
from backend.core.models import ApiTokenRow, ResourceRow, UserRow
from backend.core.types import utcnow
from tests.support.api_client import Api, build_api, seed_action, seed_opportunity, seed_resource

INVENTORY = "/api/v1/inventory?limit=2"
SOURCE = "x-finops-read-cache"


@pytest.fixture
def api(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    built = build_api(tmp_path, monkeypatch)
    with built.client:  # runs the app's lifespan: the change feed listens
        wait_for(lambda: built.client.app.state.context.change_feed.listening, "the feed")
        yield built


def wait_for(condition: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def source(response: Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers[SOURCE]


def kept(api: Api, path: str, user: str = "vera") -> Response:
    """Ask until the page comes from memory: a token's first use in a minute is recorded
    (its record is read again on the next request), so the third answer is the first that
    can; then that answer."""
    answers = [source(api.get(path, user)) for _ in range(2)]
    assert answers[0] == "miss", answers
    third = api.get(path, user)
    assert source(third) == "hit", answers
    return third


def costs(response: Response) -> list[float]:
    return [item["monthly_cost"] for item in response.json()["items"]]


def test_a_page_is_answered_from_memory_until_a_table_it_reads_changes(api: Api) -> None:
    first = seed_resource(monthly_cost=10.0)
    seed_resource(monthly_cost=20.0)
    assert costs(kept(api, INVENTORY)) == [20.0, 10.0]
    exported = api.get("/metrics", None).text
    assert 'finops_api_read_cache_answers_total{source="hit"} 1.0' in exported
    assert 'finops_api_read_cache_answers_total{source="miss"} 2.0' in exported

    seed_action()  # a table the inventory does not read: its pages stay
    time.sleep(0.3)  # the notification's time to arrive
    assert source(api.get(INVENTORY)) == "hit"

    with session_scope() as session:  # another writer than the API: a scan, say
        session.execute(update(ResourceRow).where(ResourceRow.id == first).values(monthly_cost=11))
    wait_for(lambda: costs(api.get(INVENTORY)) == [20.0, 11.0], "the new cost")
    assert source(api.get(INVENTORY)) == "hit"


def test_opportunity_pages_change_with_the_resources_they_show(api: Api) -> None:
    resource = seed_resource(region="us-east-1")
    seed_opportunity(resource)
    path = "/api/v1/opportunities"
    kept(api, path)
    with session_scope() as session:
        session.execute(
            update(ResourceRow).where(ResourceRow.id == resource).values(region="eu-west-1")
        )
    wait_for(lambda: api.get(path).json()["items"][0]["region"] == "eu-west-1", "the region")


def test_a_revoked_token_or_a_disabled_user_is_refused_though_pages_are_kept(api: Api) -> None:
    seed_resource()
    kept(api, INVENTORY, "vera")
    kept(api, INVENTORY, "otto")
    now = utcnow()
    with session_scope() as session:  # `finops users revoke` on another host, say
        session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == api.token_ids["vera"])
            .values(revoked_at=now)
        )
        session.execute(update(UserRow).where(UserRow.username == "otto").values(disabled=True))
    wait_for(lambda: api.get(INVENTORY, "vera").status_code == 401, "vera refused")
    assert "revoked" in api.get(INVENTORY, "vera").json()["detail"]
    assert api.get(INVENTORY, "otto").status_code == 401
    assert source(api.get(INVENTORY, "april")) in {"hit", "miss"}  # others still read


def test_a_page_in_memory_is_never_given_without_a_valid_token(api: Api) -> None:
    seed_resource()
    kept(api, INVENTORY)
    assert api.get(INVENTORY, None).status_code == 401
    bogus = {"Authorization": "Bearer fo_not-a-token"}
    assert api.call("GET", INVENTORY, None, headers=bogus).status_code == 401
    with session_scope() as session:
        session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == api.token_ids["vera"])
            .values(expires_at=utcnow() + dt.timedelta(seconds=1))
        )
    wait_for(lambda: api.get(INVENTORY, "vera").status_code == 401, "expired token refused", 5)


def test_a_write_through_the_api_is_read_back_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = seed_action()
    path = "/api/v1/actions"
    kept(api, path)
    feed = api.client.app.state.context.change_feed
    late = feed.bump
    # Notifications arrive a few milliseconds after a commit: here, never. This process's
    # own write must still end the pages it changed.
    monkeypatch.setattr(feed, "bump", lambda *tables: None if tables else late())
    assert api.post(f"/api/v1/actions/{action}/approve", "april").status_code == 200
    states = [item["state"] for item in api.get(path).json()["items"]]
    assert states == ["approved"]


def test_an_approval_running_out_ends_the_page_that_shows_it(api: Api) -> None:
    expires = utcnow() + dt.timedelta(seconds=1.5)
    seed_action(state="approved", approved_by="april", approval_expires_at=expires)
    path = "/api/v1/actions"
    shown = kept(api, path)
    assert shown.json()["items"][0]["approval_expired"] is False
    assert "x-finops-fresh-until" not in shown.headers  # kept, not sent
    wait_for(lambda: api.get(path).json()["items"][0]["approval_expired"], "expired", 5)


def test_while_the_feed_is_lost_nothing_is_kept_and_what_changed_meanwhile_is_read(
    api: Api,
) -> None:
    first = seed_resource(monthly_cost=10.0)
    kept(api, INVENTORY)
    with session_scope() as session:
        cut = session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": APPLICATION_NAME},
        ).all()
        assert cut, "no listening connection found"
        # a change while nobody listens: its notification goes nowhere
        session.execute(update(ResourceRow).where(ResourceRow.id == first).values(monthly_cost=12))
    feed = api.client.app.state.context.change_feed
    wait_for(lambda: not feed.listening, "the feed noticing its loss", 5)
    answered = api.get(INVENTORY)  # "off", or "miss" if the feed is back already
    assert costs(answered) == [12.0] and source(answered) != "hit"
    wait_for(lambda: feed.listening, "the feed listening again")
    assert source(api.get(INVENTORY)) == "miss"
    assert source(api.get(INVENTORY)) == "hit"


def test_the_next_pages_are_read_ahead_and_one_page_is_read_once(api: Api) -> None:
    for cost in range(1, 8):
        seed_resource(monthly_cost=float(cost))
    first = api.get(INVENTORY)
    assert source(first) == "miss"
    cursor = first.json()["next_cursor"]
    second = f"/api/v1/inventory?cursor={cursor}&limit=2"  # parameters in another order
    wait_for(lambda: source(api.get(second)) == "hit", "page 2 read ahead", 5)

    fresh = "/api/v1/inventory?limit=3"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sources = list(pool.map(lambda _: source(api.get(fresh)), range(8)))
    assert sources.count("miss") == 1, sources  # the others waited for it, or found it


def test_every_list_kept_is_open_to_every_role(api: Api) -> None:
    """A kept page goes to any caller with a valid token: a list in TABLES that needed a
    role above viewer would leak. The routes themselves must let a viewer read each."""
    from backend.api.page_cache import TABLES

    for path in TABLES:
        answered = api.get(path, "vera")
        assert answered.status_code == 200 and source(answered) == "miss", path


def test_the_routes_note_on_freshness_never_reaches_a_client(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_action(
        state="approved", approved_by="april", approval_expires_at=utcnow() + dt.timedelta(1)
    )
    feed = api.client.app.state.context.change_feed
    monkeypatch.setattr(feed, "version", lambda tables: None)  # not listening: "off"
    answered = api.get("/api/v1/actions")
    assert source(answered) == "off" and "x-finops-fresh-until" not in answered.headers
