"""A boto3 client that checks the emergency stop before every API call, reads included.

Operations call their guard before each *changing* call; this wrapper adds the check
before the describes, backups' waits and verifications around them, so an engaged stop
refuses the very next AWS request of an executing action, whatever it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Attributes that are not API calls. A paginator or waiter is checked once, when it is
# made: its own requests go through the real client.
_NOT_CALLS = frozenset({"meta", "exceptions", "waiter_names", "can_paginate"})


class StopCheckedClient:
    def __init__(self, client: Any, service: str, check: Callable[[str], None]) -> None:
        self._client = client
        self._service = service
        self._check = check

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or name in _NOT_CALLS or not callable(attr):
            return attr
        what = f"{self._service}:{name}"

        def checked(*args: Any, **kwargs: Any) -> Any:
            self._check(what)
            return attr(*args, **kwargs)

        return checked
