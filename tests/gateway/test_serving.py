"""`gateway serve`'s listening socket: connections it accepts do not wait on Nagle."""

from __future__ import annotations

import socket

import uvicorn

from gateway.serving import GatewayConfig
from tests.servers import free_port


def accepted_nodelay(config: uvicorn.Config) -> int:
    """TCP_NODELAY of a connection accepted on the socket `config` binds."""
    listener = config.bind_socket()
    listener.listen()
    try:
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                return accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


def test_connections_accepted_by_the_bound_socket_have_tcp_nodelay() -> None:
    config = GatewayConfig("gateway.app:create_app", factory=True, port=free_port(), workers=2)
    assert accepted_nodelay(config) == 1


def test_uvicorns_own_socket_lacks_it_which_is_why_the_gateway_binds_its_own() -> None:
    # If uvicorn ever sets TCP_NODELAY itself, GatewayConfig can go.
    config = uvicorn.Config("gateway.app:create_app", factory=True, port=free_port(), workers=2)
    assert accepted_nodelay(config) == 0
