"""An HTTP proxy in front of moto_server that injects AWS faults by region and service.

Rules match the SigV4 credential scope (`.../REGION/SERVICE/aws4_request`) of a request
and answer with an AWS error (AccessDenied, Throttling, a 503) or drop the connection,
for all matching requests, only the first N of them, or a share of them (`rate`, spread
evenly so a test does not depend on luck). `requests` counts every request that reached
the proxy, by (region, service).
"""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


@dataclass
class Fault:
    region: str | None = None  # None: any
    service: str | None = None
    kind: str = "access-denied"  # access-denied | throttle | unavailable | drop
    times: int | None = None  # None: always; N: only the first N matching requests
    action: str | None = None  # only requests whose body names this Action (query APIs)
    rate: float | None = None  # None: every match; 0.3: 3 in 10 matches, evenly spread
    hits: int = 0
    seen: int = 0  # matching requests, failed or not (for `rate`)

    def matches(self, region: str, service: str, body: bytes) -> bool:
        if self.region and self.region != region:
            return False
        if self.service and self.service != service:
            return False
        if self.action and f"Action={self.action}".encode() not in body:
            return False
        if self.rate is not None:
            # Fail the n-th match when it carries the running total past a whole number.
            self.seen += 1
            if int(self.seen * self.rate) == int((self.seen - 1) * self.rate):
                return False
        return self.times is None or self.hits < self.times


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (region, service)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                scope = _SCOPE.search(self.headers.get("Authorization", ""))
                region, service = scope.groups() if scope else ("", "")
                fault = proxy.take(region, service, body)
                if fault is not None:
                    self._fail(fault)
                    return
                self._forward(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

            def _fail(self, fault: Fault) -> None:
                if fault.kind == "drop":
                    self.connection.close()
                    self.close_connection = True
                    return
                status, code = {
                    "access-denied": (403, "UnauthorizedOperation"),
                    "throttle": (400, "Throttling"),
                    "unavailable": (503, "ServiceUnavailable"),
                }[fault.kind]
                payload = (
                    f"<Response><Errors><Error><Code>{code}</Code><Message>injected {fault.kind}"
                    f"</Message></Error></Errors><RequestID>x</RequestID></Response>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body or None,
                    headers=headers,
                    method=self.command,
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        status, data, answer_headers = answer.status, answer.read(), answer.headers
                except urllib.error.HTTPError as exc:
                    status, data, answer_headers = exc.code, exc.read(), exc.headers
                self.send_response(status)
                for key, value in answer_headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "server",
                        "date",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def take(self, region: str, service: str, body: bytes) -> Fault | None:
        with self.lock:
            self.requests[(region, service)] += 1
            for fault in self.faults:
                if fault.matches(region, service, body):
                    fault.hits += 1
                    return fault
        return None

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
