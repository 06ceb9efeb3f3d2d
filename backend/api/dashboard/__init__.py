"""The web dashboard: hand-written HTML, CSS and JavaScript modules, served at /dashboard/.

No build step and nothing from a CDN: the files under `static/` ship in the wheel as package
data and are served as they are. The pages call the API with the token a user gets from
POST /api/v1/auth/login (kept in sessionStorage), so the API's roles decide everything; the
pages only hide what a role cannot use. `/` redirects here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
MOUNT = "/dashboard"
# Everything comes from this origin: no inline script or style, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgrade is seen at the next load
}


class DashboardFiles(StaticFiles):
    """StaticFiles with the dashboard's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_dashboard(app: FastAPI) -> None:
    app.mount(MOUNT, DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{MOUNT}/")
