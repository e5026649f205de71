"""`gateway serve`: uvicorn configured for this service, one process or several workers.

With `--workers` > 1 uvicorn binds the listening socket itself as `socket(AF_INET,
SOCK_STREAM)`, protocol 0, and asyncio only sets TCP_NODELAY on connections whose protocol is
IPPROTO_TCP. Without it, a response written in two sends (headers, then body) waits for the
client's delayed ACK: measured here, 53 ms for a sequential `/healthz` on a kept-alive
connection with 2 workers against 1.5 ms with 1. Linux gives accepted connections the
listening socket's TCP_NODELAY, so the socket is bound with it set.

A request's header block is capped (`GATEWAY_MAX_REQUEST_HEADER_BYTES`): past it the server
answers 431 and closes, before the app sees the request. uvicorn's httptools protocol (its
choice when httptools is installed, as here) has no limit of its own: a 1 MB `baggage` header
reached the app, the logs and MLflow. `HeaderCappedProtocol` counts and refuses.
"""

from __future__ import annotations

import socket
from typing import Any

import httptools
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import ChangeReload, Multiprocess

from gateway.settings import Settings

log = structlog.get_logger("gateway")

_TOO_LARGE = b"request header fields too large"
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TOO_LARGE
)


class _HeadersTooLargeError(Exception):
    """Raised in a parser callback to stop parsing a header block past the cap."""


class HeaderCappedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 to a header block past the cap.

    Two lower bounds of the block's size are kept, and either past the cap refuses: the
    parsed request line and header lines, and the bytes of every chunk received wholly
    inside the block (httptools holds an unfinished line, however long, in memory). So
    nothing is refused under the cap, and a block is never held much past it (a chunk).
    """

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_header_bytes: int = getattr(config, "max_request_header_bytes", 16_384)
        self._message = 0
        self._in_headers = False
        self._parsed_bytes = 0
        self._chunk_bytes = 0
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message += 1
        self._in_headers = True
        self._parsed_bytes = self._chunk_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def _count(self, parsed: int) -> None:
        self._parsed_bytes += parsed
        if self._parsed_bytes > self.max_header_bytes:
            self._refused = True
            raise _HeadersTooLargeError  # httptools stops and raises a parser error

    def data_received(self, data: bytes) -> None:
        # uvicorn's `data_received`, with the header cap.
        if self._refused:
            return
        self._unset_keepalive_if_required()
        message, in_headers = self._message, self._in_headers
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:
                self._refuse()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if in_headers and self._in_headers and message == self._message:
            self._chunk_bytes += len(data)
            if self._chunk_bytes > self.max_header_bytes:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        log.warning(
            "http.headers_too_large",
            limit_bytes=self.max_header_bytes,
            seen_bytes=max(self._parsed_bytes, self._chunk_bytes),
        )
        self.transport.write(_431)
        self.transport.close()


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config whose listening socket has TCP_NODELAY (inherited by connections),
    carrying the header cap to each connection's protocol (and to worker processes)."""

    def __init__(self, *args: Any, max_request_header_bytes: int = 16_384, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_request_header_bytes = max_request_header_bytes

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def serve(
    settings: Settings, *, host: str, port: int, workers: int, keep_alive: int, reload: bool
) -> None:
    """Serve the app until stopped (what `uvicorn.run` does, with GatewayConfig)."""
    config = GatewayConfig(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        reload=reload,
        workers=None if reload else workers,
        # Longer than the idle timeout of load balancers and client pools (60 s on AWS ALB,
        # 5 s in httpx): the client must always be the side that closes an idle connection,
        # or a request sent as the server closes it fails with a reset.
        timeout_keep_alive=keep_alive,
        # Open connections per worker, idle and slow ones included: past it, uvicorn answers 503
        # at once instead of holding file descriptors until the process runs out.
        limit_concurrency=settings.max_connections,
        access_log=False,  # the gateway logs its own `http.request` event with the request id
        log_config=None,
        proxy_headers=True,
        http=HeaderCappedProtocol,
        max_request_header_bytes=settings.max_request_header_bytes,
    )
    run(config)


def run(config: uvicorn.Config) -> None:
    """Run a configured server: reloading, several worker processes, or this process."""
    server = uvicorn.Server(config=config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
