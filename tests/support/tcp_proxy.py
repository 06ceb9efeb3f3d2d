"""A TCP proxy that can cut every connection through it: a database "stopped" for the
processes behind it only, while the test itself keeps its direct line."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_off = False
        self._flowing = threading.Event()  # cleared: frozen
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def in_front_of(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy to the server of a database URL, and the same URL through the proxy."""
        host = url.split("@", 1)[1].split("/", 1)[0]
        name, port = host.rsplit(":", 1) if ":" in host else (host, "5432")
        proxy = cls(name, int(port))
        return proxy, url.replace(f"@{host}/", f"@127.0.0.1:{proxy.port}/")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._open.append(client)
        self._flowing.wait()  # frozen: accepted, and never answered
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.append(server)
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones, as a stopped server would."""
        self.cut_off = True
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._open.clear()

    def freeze(self) -> None:
        """Hold every byte and every new connection, as a SIGSTOPped server does: the
        kernel still accepts, nothing answers."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self.cut()  # first: what a freeze held is dropped, never delivered late
        self.thaw()
        self._listener.close()
