"""A mailbox on loopback that speaks enough SMTP for smtplib, for the demo's owner notices.

The demo has no mail server, yet the owner-notice flow must really deliver before anything
acts; this peer receives the mails (and the tests use it as their SMTP peer too).
"""

from __future__ import annotations

import base64
import email
import email.policy
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage


@dataclass
class SmtpPeer:
    """Enough ESMTP for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    reject_recipients: set[str] = field(default_factory=set)
    mail: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    # Called with each message before it is accepted: the sender waits for it (tests).
    on_mail: Callable[[Mail], None] | None = None
    _server: socketserver.ThreadingTCPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start the peer first"
        return int(self._server.server_address[1])

    def __enter__(self) -> Self:
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 peer ESMTP test")
                sender, recipients = "", list[str]()
                while raw := self.rfile.readline():
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    arg = line[len(verb) :].strip()
                    if verb == "EHLO":
                        self.wfile.write(b"250-peer\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
                    elif verb in ("HELO", "NOOP", "RSET"):
                        self.reply("250 ok")
                    elif verb == "AUTH":
                        _, user, password = base64.b64decode(arg.split()[1]).split(b"\0")
                        peer.logins.append((user.decode(), password.decode()))
                        self.reply("235 authenticated")
                    elif verb == "MAIL":
                        sender, recipients = _address(arg), []
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        address = _address(arg)
                        if address in peer.reject_recipients:
                            self.reply("550 no such user")
                        else:
                            recipients.append(address)
                            self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 end with .")
                        mail = Mail(sender, recipients, self.read_data())
                        if peer.on_mail is not None:
                            peer.on_mail(mail)
                        peer.mail.append(mail)
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

            def read_data(self) -> EmailMessage:
                lines: list[bytes] = []
                while (raw := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(raw[1:] if raw.startswith(b"..") else raw)
                parsed = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                return parsed

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _address(arg: str) -> str:
    """'FROM:<a@b.c> SIZE=12' -> 'a@b.c'."""
    return arg.split(":", 1)[1].strip().split(">", 1)[0].lstrip("<")
