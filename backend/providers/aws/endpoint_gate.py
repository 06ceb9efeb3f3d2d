"""At most N requests in flight per AWS endpoint, per process.

The scan describes many kinds and regions from a pool of threads. Without a limit, every
thread that targets one endpoint (one service in one region: ec2.us-east-1, monitoring.
us-east-1, or a single custom endpoint URL) has a request open there at once. Measured on
the benchmark's moto server, two concurrent DescribeInstances took 10.4 s where the same two
one after the other took 6.8 s; the scan of 2,000 instances took 53 s with eight in flight
and about 35 s with one. On AWS, the endpoints of other regions and services still run in
parallel, and one stream per endpoint keeps the scan's share of the account's request
quota (shared with everything else in the account) small.

The slot is held from the send to the end of the answer's body, not while botocore parses
it: the next request goes out while this one's answer is turned into Python.
"""

from __future__ import annotations

import threading
from typing import Any


class EndpointGates:
    """One bounded semaphore per endpoint URL; `limit` None means no limit."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"requests per endpoint must be at least 1, not {limit}")
        self._limit = limit
        self._gates: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        # A request is sent, read and parsed on the caller's thread, so the thread knows
        # which slot it holds (`held`) between the events below.
        self._local = threading.local()

    def _gate(self, endpoint_url: str) -> threading.BoundedSemaphore | None:
        if self._limit is None:
            return None
        with self._lock:
            found = self._gates.get(endpoint_url)
            if found is None:
                found = self._gates[endpoint_url] = threading.BoundedSemaphore(self._limit)
            return found

    def attach(self, client: Any) -> None:
        """Gate every HTTP request this botocore client sends."""
        gate = self._gate(str(client.meta.endpoint_url))
        if gate is None:
            return
        local = self._local

        def acquire(**_: Any) -> None:
            gate.acquire()
            local.held = gate

        def release(**_: Any) -> None:
            # before-parse comes once the body is read; needs-retry after every attempt,
            # answered or failed. Whichever comes first frees the slot.
            held = getattr(local, "held", None)
            if held is not None:
                local.held = None
                held.release()

        client.meta.events.register("before-send", acquire)
        client.meta.events.register("before-parse", release)
        client.meta.events.register("needs-retry", release)
