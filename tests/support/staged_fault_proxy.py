"""A FaultProxy that can fail only the requests after a given one, and lose an answer.

`after` and `staged`: the staged faults arm once a request naming `after` (a query-API
Action) has been let through, so "the read after the change" fails and not the read before
it. `lose_answer_of`: one request naming that Action is delivered to moto, then its
connection is dropped (the change is made; the caller never hears so). `sent` counts the
Actions seen and `log` keeps them in order with their bodies.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from tests.support.fault_proxy import Fault, FaultProxy

_ACTION = re.compile(rb"(?:^|&)Action=([A-Za-z]+)")


@dataclass
class StagedFaultProxy(FaultProxy):
    """A FaultProxy whose `staged` faults arm only once a request naming `after` has been
    let through to moto (so "the read after the change" can fail, not the read before it);
    and which can let one `lose_answer_of` request reach moto and then drop its answer."""

    after: str | None = None
    staged: list[Fault] = field(default_factory=list)
    lose_answer_of: str | None = None
    armed: bool = False
    lost: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # query-API actions seen, by name
    log: list[tuple[str, bytes]] = field(default_factory=list)

    def take(self, region: str, service: str, body: bytes) -> Fault | None:
        named = _ACTION.search(body)
        if named:
            with self.lock:
                self.sent[named.group(1).decode()] += 1
                self.log.append((named.group(1).decode(), body))
        fault = super().take(region, service, body)
        if fault is not None:
            return fault
        with self.lock:
            if self.lose_answer_of and f"Action={self.lose_answer_of}&".encode() in body + b"&":
                self.lose_answer_of = None
                self.lost += 1
                _send_upstream(self.upstream, region, service, body)
                return Fault(kind="drop")
            if self.armed:
                for staged in self.staged:
                    if staged.matches(region, service, body):
                        staged.hits += 1
                        return staged
            if self.after and f"Action={self.after}&".encode() in body + b"&":
                self.armed = True
        return None


def _send_upstream(upstream: str, region: str, service: str, body: bytes) -> None:
    """Deliver a query-API request to moto ourselves (moto does not check signatures)."""
    scope = f"testing/20250101/{region}/{service}/aws4_request"
    request = urllib.request.Request(
        upstream + "/",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, "
            "Signature=0",
        },
    )
    urllib.request.urlopen(request, timeout=30).read()


def stop_calls(proxy: StagedFaultProxy, log: list[tuple[str, bytes]] | None = None) -> Counter[str]:
    """StopInstances requests that reached the proxy, by instance id."""
    calls: Counter[str] = Counter()
    for action, body in list(proxy.log) if log is None else log:
        if action == "StopInstances":
            for part in body.decode().split("&"):
                if part.startswith("InstanceId."):
                    calls[part.split("=", 1)[1]] += 1
    return calls
