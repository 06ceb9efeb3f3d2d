"""The dashboard's files: served by the app at /dashboard/ with a strict content security
policy, `/` redirecting there, nothing loaded from another origin, and every file shipped as
package data in the wheel."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api import create_app
from backend.api.dashboard import STATIC_DIR

ROOT = Path(__file__).resolve().parents[3]
FILES = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app())


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard/"
    assert (
        client.get("/dashboard", follow_redirects=False).headers["location"].endswith("/dashboard/")
    )


def test_the_page_and_its_modules_are_served_with_security_headers(client: TestClient) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for path in FILES:
        relative = path.relative_to(STATIC_DIR).as_posix()
        response = client.get(f"/dashboard/{relative}")
        assert response.status_code == 200, relative
        if relative.endswith(".js"):
            assert "javascript" in response.headers["content-type"]
        assert response.headers["cache-control"] == "no-cache"


def test_an_unknown_file_is_a_problem_document(client: TestClient) -> None:
    response = client.get("/dashboard/js/nothing-here.js")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_no_asset_comes_from_another_origin_and_no_markup_is_injected() -> None:
    for path in FILES:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", text), path
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, path
        assert "eval(" not in text and "new Function" not in text, path
        if path.suffix == ".html":  # the policy allows no inline script or style
            assert "<style" not in text and " style=" not in text, path
            assert re.findall(r"<script[^>]*>", text) == ['<script type="module" src="js/main.js">']


def test_every_module_a_module_imports_exists() -> None:
    for path in (p for p in FILES if p.suffix == ".js"):
        for target in re.findall(r"^import .* from \"(\.[^\"]+)\";$", path.read_text(), re.M):
            assert (path.parent / target).resolve().is_file(), (path, target)


def test_every_file_is_package_data_so_the_wheel_ships_it() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["backend"]
    package = ROOT / "backend"
    for path in FILES:
        relative = path.relative_to(package).as_posix()
        matched = [
            p
            for p in patterns
            if fnmatch.fnmatch(relative, p) and p.count("/") == relative.count("/")
        ]
        assert matched, f"{relative} is not in [tool.setuptools.package-data]"
