"""Liveness and readiness probes; no token needed (the kubelet and load balancers call them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import ContextDep
from backend.api.readiness import check_readiness_within

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    """The process answers: nothing else is checked, so a database outage restarts nothing."""
    return {"status": "alive"}


@router.get(
    "/ready",
    responses={503: {"description": "Not ready: the reasons, and the result of each check"}},
)
def ready(context: ContextDep) -> JSONResponse:
    """200 with each check when ready; 503 with the reasons when not."""
    result = check_readiness_within(context)
    return JSONResponse(result.as_dict(), status_code=200 if result.ready else 503)
