"""deploy/nginx.conf, run by a real nginx in front of a real `gateway serve` process.

uvicorn cannot bound a client that sends its headers a byte at a time; the edge does. The file
is used as committed except for what only compose can give it (the upstream's name, the port)
and the header timeout, shortened so the test takes seconds.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings
from tests.servers import GatewayProcess, free_port
from tests.support import IN_CI

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / "deploy" / "nginx.conf").read_text()
TEST_HEADER_TIMEOUT_S = 2


def seconds(directive: str) -> int:
    match = re.search(rf"^\s*{directive} (\d+)s;", CONFIG, re.MULTILINE)
    assert match is not None, f"{directive} is not set in deploy/nginx.conf"
    return int(match.group(1))


NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
NGINX_MISSING = "nginx is not installed (apt-get install nginx-light); .ci/run installs it"
# Outside CI a machine without nginx skips the tests that run it; in CI they fail instead.
needs_nginx = pytest.mark.skipif(NGINX is None and not IN_CI, reason=NGINX_MISSING)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[str]:
    """The committed config in front of a real gateway; yields the edge's base URL."""
    if NGINX is None:
        pytest.fail(NGINX_MISSING)  # in CI only: elsewhere `needs_nginx` skipped the test
    binary = NGINX
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
    }
    with GatewayProcess(tmp_path, env) as gateway:
        gateway.wait_until_listening()
        port = free_port()
        config = (
            CONFIG.replace("server gateway:8000", f"server 127.0.0.1:{gateway.port}")
            .replace("listen 8080;", f"listen 127.0.0.1:{port};")
            .replace(
                "client_header_timeout 10s;", f"client_header_timeout {TEST_HEADER_TIMEOUT_S}s;"
            )
            .replace("worker_processes auto;", f"worker_processes 1;\npid {tmp_path}/nginx.pid;")
            .replace(
                "http {",
                "http {\n"
                + "".join(
                    f"    {name}_temp_path {tmp_path}/{name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
                ),
            )
        )
        path = tmp_path / "nginx.conf"
        path.write_text(config)
        process = subprocess.Popen(
            [
                binary,
                "-p",
                str(tmp_path),
                "-c",
                str(path),
                "-e",
                str(tmp_path / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "nginx.err").open("wb"),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (tmp_path / "nginx.err").read_text()
                try:
                    httpx.get(f"{url}/healthz", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "nginx never answered"
                    time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=15)


@needs_nginx
def test_requests_pass_through_the_edge_to_the_gateway(edge: str) -> None:
    response = httpx.get(f"{edge}/api/artifacts/1")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"]
    assert "server" not in response.headers or "nginx/" not in response.headers["server"]


@needs_nginx
def test_a_client_dripping_its_headers_is_cut_off_at_the_header_timeout(edge: str) -> None:
    port = int(edge.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")
        started = time.monotonic()
        closed_after = None
        sock.settimeout(0.5)
        while time.monotonic() - started < 15:
            try:
                sock.sendall(b"X")  # one byte of a header every half second, never a full line
                if sock.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the peer
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the edge kept a dripping client for 15 s"
    assert closed_after < TEST_HEADER_TIMEOUT_S + 2


def test_timeouts_are_ordered_so_each_hop_gives_up_before_the_one_behind_it() -> None:
    assert seconds("client_header_timeout") <= 10
    assert seconds("client_body_timeout") <= 10
    # The edge waits longer for an answer than any request may run.
    assert seconds("proxy_read_timeout") > Settings().request_timeout_s
    # Idle upstream connections are closed by nginx before the gateway (75 s) closes them.
    assert seconds("keepalive_timeout") < 75
    upstream = re.search(r"upstream gateway \{(.*?)\}", CONFIG, re.DOTALL)
    assert upstream is not None
    assert "keepalive_timeout 60s;" in upstream.group(1)
