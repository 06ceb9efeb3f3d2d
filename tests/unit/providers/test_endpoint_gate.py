"""Requests in flight per endpoint: counted at a real HTTP server that answers slowly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from backend.providers.aws.breakers import BreakerRegistry
from backend.providers.aws.endpoint_gate import EndpointGates
from backend.providers.aws.session import AccountTarget, AwsClients

VPCS = b"<DescribeVpcsResponse><vpcSet/></DescribeVpcsResponse>"
THROTTLED = (
    b"<Response><Errors><Error><Code>Throttling</Code><Message>slow down</Message></Error>"
    b"</Errors><RequestID>r</RequestID></Response>"
)


class Counter:
    """Requests being answered now, and the most seen at once, over every server."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.mode = "ok"  # ok | throttle | hang-up

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _server(counter: Counter) -> ThreadingHTTPServer:
    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            # Counted while it works, not while it answers: once the client has the
            # answer, its next request may arrive before this thread returns.
            counter.enter()
            time.sleep(0.15)
            counter.leave()
            if counter.mode == "hang-up":
                self.close_connection = True
                return  # no answer at all: the client sees the connection closed
            body, status = (THROTTLED, 400) if counter.mode == "throttle" else (VPCS, 200)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def servers(counter: Counter) -> Iterator[list[str]]:
    made = [_server(counter), _server(counter)]
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in made]
    for s in made:
        s.shutdown()
        s.server_close()


def _clients(url: str, gates: EndpointGates) -> AwsClients:
    session = boto3.session.Session(
        aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    return AwsClients(url, session, breakers=BreakerRegistry(), gates=gates)


def _describe_from_threads(clients: list[AwsClients], threads: int) -> list[str]:
    """`threads` DescribeVpcs at once, spread over the clients and two regions each."""

    def one(i: int) -> str:
        ec2 = clients[i % len(clients)].client(
            AccountTarget(None), "ec2", ("us-east-1", "eu-west-1")[i // len(clients) % 2]
        )
        try:
            ec2.describe_vpcs()
            return "ok"
        except (ClientError, ConnectionClosedError) as exc:
            return type(exc).__name__

    # Daemon threads joined with a timeout: a slot that leaked fails the test, not hangs it.
    outcomes: dict[int, str] = {}
    started = [
        threading.Thread(target=lambda i=i: outcomes.update({i: one(i)}), daemon=True)
        for i in range(threads)
    ]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(timeout=20)
    assert len(outcomes) == threads, "a request still waits for its endpoint's slot"
    return [outcomes[i] for i in range(threads)]


@pytest.mark.parametrize("limit", [1, 2])
def test_one_endpoint_never_has_more_than_the_limit_in_flight(
    servers: list[str], counter: Counter, limit: int
) -> None:
    outcomes = _describe_from_threads([_clients(servers[0], EndpointGates(limit))], 6)
    assert outcomes == ["ok"] * 6
    assert counter.most == limit


def test_without_a_limit_every_thread_is_in_flight_at_once(
    servers: list[str], counter: Counter
) -> None:
    _describe_from_threads([_clients(servers[0], EndpointGates(None))], 4)
    assert counter.most == 4


def test_different_endpoints_are_not_held_by_each_other(
    servers: list[str], counter: Counter
) -> None:
    gates = EndpointGates(1)  # one set of gates, as one process has
    _describe_from_threads([_clients(url, gates) for url in servers], 4)
    assert counter.most == 2  # one at each of the two endpoints


@pytest.mark.parametrize(("mode", "error"), [("throttle", "ClientError"), ("hang-up", "Conn")])
def test_a_failed_request_frees_its_slot(
    servers: list[str], counter: Counter, mode: str, error: str
) -> None:
    clients = _clients(servers[0], EndpointGates(1))
    counter.mode = mode
    outcomes = _describe_from_threads([clients], 3)  # would hang if a failure kept the slot
    assert all(o.startswith(error) for o in outcomes)
    counter.mode = "ok"
    assert _describe_from_threads([clients], 2) == ["ok", "ok"]
    assert counter.most == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EndpointGates(0)
