"""The automation engine's status (viewer): the runbook's AutoRemediationEngine.get_status()."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from pydantic import BaseModel

from backend.api.deps import ContextDep, Viewer
from backend.api.routers import API_PREFIX

router = APIRouter(prefix=f"{API_PREFIX}/engine", tags=["engine"])


class EngineStatusOut(BaseModel):
    running: bool
    state: str
    mode: str
    database: str
    emergency_stop: str
    workers: list[str]
    backlog: str
    last_hour: dict[str, int] | None
    last_day: dict[str, int] | None
    failure_rate: str
    circuit_breakers: str
    notifications: str
    problems: list[str]


@router.get("/status", response_model=EngineStatusOut)
def status(context: ContextDep, _: Viewer) -> EngineStatusOut:
    """Never fails for a broken dependency: what cannot be read is listed in `problems`."""
    found = context.remediation().get_status()
    return EngineStatusOut(running=found.state == "running", **dataclasses.asdict(found))
