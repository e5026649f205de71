"""Peers that misbehave on purpose, between the gateway and a real server (or instead of one).

A recording proxy that can delay or go down, a port that accepts and never answers, and a TCP
relay that can cut every connection or drip its answer one byte at a time.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.servers import free_port


class RecordingProxy:
    """An HTTP reverse proxy on loopback that records requests and can delay or go down.

    Sits between the gateway and a real server: the gateway talks to `url`; `requests` lists
    (method, path, body) of what reached the upstream, `targets` each path with its query.
    `delay_s` holds each request back; `stop()` closes the port (connection refused) and the
    connections it holds (as a server going down does: a client's pooled connection does not
    outlive it), and `start()` reopens the same port.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str, bytes]] = []
        self.targets: list[str] = []
        # The headers of each request that reached the upstream (lower-case names).
        self.headers: list[dict[str, str]] = []
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    def paths(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [path for _, path, _ in self.requests if path.startswith(prefix)]

    def bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return [body for _, p, body in self.requests if p == path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.targets.clear()
            self.headers.clear()

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                with suppress(OSError):
                    super().finish()

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                with proxy._lock:
                    proxy.requests.append((self.command, self.path.split("?")[0], body))
                    proxy.targets.append(self.path)
                    proxy.headers.append({k.lower(): v for k, v in self.headers.items()})
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length", "connection"}
                }
                try:
                    upstream = httpx.request(
                        self.command,
                        proxy.upstream + self.path,
                        content=body,
                        headers=headers,
                        timeout=30,
                    )
                except httpx.HTTPError:
                    self.send_error(502)
                    return
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in {
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    }:
                        self.send_header(key, value)
                if self.command == "HEAD":  # the upstream's length, and no body
                    length = upstream.headers.get("content-length", "0")
                    self.send_header("content-length", length)
                    self.end_headers()
                    return
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            # socketserver's default backlog is 5: a wave of concurrent searches overflowed it
            # and a connect waited for the SYN retry (a ConnectTimeout the gateway never caused).
            request_queue_size = 128

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SilentListener:
    """A loopback port that accepts TCP connections and never answers (a hung server)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        # Joined first: a thread still in accept() keeps the port listening after close().
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class TcpProxy:
    """A loopback TCP relay to a real server that can cut every connection and refuse new ones.

    `stop()` behaves like the server going down mid-flight (open connections are reset, the port
    refuses); `start()` brings it back on the same port. `drip_s` delays each byte sent back to
    the client by that many seconds (a server that drips its answer).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.drip_s = 0.0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self.live_pipes = 0  # relay directions still running

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, to_client: bool) -> None:
        with self._lock:
            self.live_pipes += 1
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if to_client and self.drip_s:
                    for i in range(len(data)):
                        target.sendall(data[i : i + 1])
                        time.sleep(self.drip_s)
                else:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self.live_pipes -= 1

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with suppress(OSError):
                # Linger 0: the peer gets a reset, as when a server process dies.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
