"""`gateway serve`: uvicorn configured for this service, one process or several workers.

With `--workers` > 1 uvicorn binds the listening socket itself as `socket(AF_INET,
SOCK_STREAM)`, protocol 0, and asyncio only sets TCP_NODELAY on connections whose protocol is
IPPROTO_TCP. Without it, a response written in two sends (headers, then body) waits for the
client's delayed ACK: measured here, 53 ms for a sequential `/healthz` on a kept-alive
connection with 2 workers against 1.5 ms with 1. Linux gives accepted connections the
listening socket's TCP_NODELAY, so the socket is bound with it set.
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import ChangeReload, Multiprocess

from gateway.settings import Settings


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config whose listening socket has TCP_NODELAY (inherited by connections)."""

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
