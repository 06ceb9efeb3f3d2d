"""A Redis client made on first use, with short timeouts: constructing the services that hold
one (at engine or worker start) touches nothing, and a dead Redis answers in half a second."""

from __future__ import annotations

import redis


class LazyRedis:
    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self._url = url
        self._timeout = timeout
        self._client: redis.Redis | None = None

    def __call__(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
        return self._client
