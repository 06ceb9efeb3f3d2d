"""Real network peers for notification tests: an HTTP server that records posts and answers
with scripted statuses, and a small SMTP server (aiosmtpd is not installed, and the stdlib's
smtpd module is gone in 3.12) that records the mail it accepts.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from backend.demo.mailbox import Mail, SmtpPeer

__all__ = ["HttpPeer", "Mail", "Post", "SmtpPeer"]


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpPeer:
    """Answers POSTs with the scripted statuses first, then with `status`; records them all."""

    def __init__(self, status: int = 200, script: Iterable[int] = ()) -> None:
        self.status = status
        self.script: deque[int] = deque(script)
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def answer(self) -> int:
        with self._lock:
            return self.script.popleft() if self.script else self.status

    def set_status(self, status: int) -> None:
        with self._lock:
            self.status = status

    def record(self, post: Post) -> None:
        with self._lock:
            self.posts.append(post)

    @property
    def url(self) -> str:
        assert self._server is not None, "start the peer first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                peer.record(Post(self.path, dict(self.headers.items()), body))
                status = peer.answer()
                reply = b"ok" if status < 400 else b"peer error"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
