"""Real servers for tests: uvicorn in-process and `gateway serve` processes on free loopback
ports, mlflow server, PostgreSQL schemas, and faulty peers (proxies, silent listeners)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_unreachable_reason() -> str | None:
    """None when PostgreSQL answers, else why it does not."""
    try:
        with psycopg.connect(_libpq_url(POSTGRES_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable at {POSTGRES_URL}: {str(exc).strip().splitlines()[0]}"


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the shared test database; yields an SQLAlchemy URL that uses it."""
    name = f"gw_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True)
    try:
        admin.execute(f'CREATE SCHEMA "{name}"')
        sep = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


class LiveServer:
    """uvicorn serving an ASGI app on loopback in a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config.setdefault("log_level", "warning")
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on", **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class MlflowServer:
    """A real `mlflow server` subprocess on a free loopback port with a SQLite backend."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 240) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--default-artifact-root",
                (self.root / "artifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=(self.root / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self._warm_up()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError("mlflow server did not become healthy")

    def _warm_up(self) -> None:
        # The first searches of a fresh server are slow (query compilation); keep that out of
        # the tests' tight lookup budgets.
        for _ in range(2):
            httpx.post(
                f"{self.url}/api/2.0/mlflow/experiments/search",
                json={"max_results": 10},
                timeout=30,
            )
            httpx.post(
                f"{self.url}/api/2.0/mlflow/runs/search",
                json={"experiment_ids": ["0"], "filter": "tags.workflow_id = 'x'"},
                timeout=30,
            )

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, open connections die with it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.process = None


class RecordingProxy:
    """An HTTP reverse proxy on loopback that records requests and can delay or go down.

    Sits between the gateway and a real server: the gateway talks to `url`; `requests` lists
    (method, path, body) of what reached the upstream. `delay_s` holds each request back;
    `stop()` closes the port (connection refused) and `start()` reopens the same port.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str, bytes]] = []
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def paths(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [path for _, path, _ in self.requests if path.startswith(prefix)]

    def bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return [body for _, p, body in self.requests if p == path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                with proxy._lock:
                    proxy.requests.append((self.command, self.path.split("?")[0], body))
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
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class SilentListener:
    """A loopback port that accepts TCP connections and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

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


def s3_client(endpoint: str) -> Any:
    """The real minio client for moto's S3 server (any credentials are accepted)."""
    from minio import Minio

    return Minio(
        endpoint, access_key="testing", secret_key="testing", secure=False, region="us-east-1"
    )


class GatewayProcess:
    """A real `gateway serve` process on a free loopback port, its output kept in files."""

    def __init__(self, root: Path, env: dict[str, str], *args: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.args = args
        self.stdout = root / "gateway.out"
        self.stderr = root / "gateway.err"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProcess:
        gateway = Path(sys.executable).with_name("gateway")
        self.process = subprocess.Popen(
            [str(gateway), "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=self.stdout.open("wb"),
            stderr=self.stderr.open("wb"),
            start_new_session=True,
        )
        return self

    def wait_until_listening(self, timeout_s: float = 120) -> None:
        """Until /healthz answers (sized for a loaded 2-core machine: imports take seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway serve exited: {self.stderr.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("gateway serve did not start")

    def output_lines(self) -> list[str]:
        """Every line the process wrote, stdout then stderr."""
        return [
            line
            for path in (self.stdout, self.stderr)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)

    def __exit__(self, *exc: object) -> None:
        self.stop()
