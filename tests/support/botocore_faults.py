"""AWS errors injected on chosen calls by botocore event hooks on a session, for tests whose
engine's clients come from that session (in-process moto)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError


class Faults:
    """Errors to raise on the next calls of an operation (before the call reaches moto)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self.session = boto3.session.Session()
        self.session.events.register("before-call.*.*", self._before)

    def fail(self, operation: str, code: str, times: int = 1) -> None:
        self.pending.setdefault(operation, []).extend([code] * times)

    def _before(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.calls.append(operation)
        codes = self.pending.get(operation)
        if codes:
            code = codes.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, operation)
