"""Real HTTP against uvicorn on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from starlette.applications import Starlette

from tests.servers import LiveServer, free_port


def test_uvicorn_serves_graphql_and_rest_over_real_http(
    app: Starlette, insert: Callable[..., int]
) -> None:
    artifact_id = insert(name="live", symbol="AAPL")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        body = http.post(
            "/graphql",
            json={
                "query": "query($id: Int!) { artifact(id: $id) { id name symbol } }",
                "variables": {"id": artifact_id},
            },
        ).json()
        assert body == {"data": {"artifact": {"id": artifact_id, "name": "live", "symbol": "AAPL"}}}
        rest = http.get(f"/api/artifacts/{artifact_id}")
        assert rest.status_code == 200
        assert rest.json()["name"] == "live"
        assert http.get("/readyz").status_code == 200
        assert "gateway_http_requests_total" in http.get("/metrics").text


def _get_on(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_gateway_serve_keeps_idle_connections_longer_than_client_pools(tmp_path: Path) -> None:
    # uvicorn's default closes a connection idle for 5 s, which is also httpx's pool expiry:
    # a request sent on a connection as the server closes it fails with a reset (seen once in
    # the load benchmark). `gateway serve` keeps idle connections 75 s; the client closes first.
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    gateway = Path(sys.executable).with_name("gateway")
    server = subprocess.Popen(
        [str(gateway), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert server.poll() is None, "gateway serve exited"
                assert time.monotonic() < deadline, "gateway serve did not start"
                time.sleep(0.2)
        with sock:
            assert _get_on(sock, "/healthz").startswith(b"HTTP/1.1 200")
            time.sleep(6.5)  # idle past uvicorn's default keep-alive and httpx's pool expiry
            assert _get_on(sock, "/healthz").startswith(b"HTTP/1.1 200")
    finally:
        server.terminate()
        server.wait(timeout=30)
