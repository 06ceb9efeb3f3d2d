"""A bounded, thread-safe map from an API token to what a process keeps about it.

Kept by the token's SHA-256, never the token itself; past `size` entries the least recently
put (or touched) goes first. The token cache and the emergency stop's break-glass memory
each keep one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from backend.api.security import hash_token

V = TypeVar("V")


class ByToken(Generic[V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._values: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, *, touch: bool = False) -> V | None:
        """The value kept for the token; `touch` makes it the most recently used."""
        key = hash_token(token.strip())
        with self._lock:
            value = self._values.get(key)
            if value is not None and touch:
                self._values.move_to_end(key)
            return value

    def put(self, token: str, value: V) -> None:
        key = hash_token(token.strip())
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)

    def pop(self, token: str) -> None:
        with self._lock:
            self._values.pop(hash_token(token.strip()), None)
