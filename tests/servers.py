"""Real servers for tests: uvicorn in-process and `gateway serve` processes on free loopback
ports, mlflow server, PostgreSQL schemas, and faulty peers (proxies, silent listeners)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


class ServerProcess:
    """A server subprocess in a process group of its own, killed or stopped as a whole."""

    process: subprocess.Popen[bytes] | None = None
    stop_grace_s = 15.0

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, open connections die with it, the port refuses."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace_s=self.stop_grace_s)
        self.process = None


# sitecustomize for the test MLflow servers: see tests/mlflow_site/sitecustomize.py.
MLFLOW_SITE = Path(__file__).resolve().parent / "mlflow_site"


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


class MlflowServer(ServerProcess):
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
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(MLFLOW_SITE), *_pythonpath()]),
                # MLflow 3's job runner (a job process and eight huey consumers, each importing
                # MLflow for seconds of CPU after /health answers) serves features the gateway
                # never asks for; on 2 cores it competed with the tests and benchmarks.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
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


def redis_server_binary() -> str | None:
    """Path of `redis-server`, or None when it is not installed."""
    import shutil

    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def redis_server_missing_reason() -> str | None:
    """None when `redis-server` can be started, else why it cannot."""
    if redis_server_binary() is not None:
        return None
    return "redis-server is not installed (Debian: apt-get install redis-server)"


class RedisServer(ServerProcess):
    """A real `redis-server` on a free loopback port (never the machine's own on 6379): no
    persistence, killed and restarted on the same port by the fault tests."""

    stop_grace_s = 10.0

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port if port is not None else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> RedisServer:
        import redis

        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=(self.root / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.root / 'redis.log').read_text()}")
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    if client.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def client(self) -> Any:
        """A synchronous redis-py client of this server (for the tests' own looks)."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)


def stop_group(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM a server's process group, SIGKILL it if it is still there after `grace_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


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

    def wait_until_ready(self, timeout_s: float = 120) -> None:
        """Until /readyz says ready: listening, and lineage's MLflow warm-up is over (it burns
        CPU and sends MLflow requests of its own)."""
        self.wait_until_listening(timeout_s)
        deadline = time.monotonic() + timeout_s
        while httpx.get(f"{self.url}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("gateway serve never became ready")
            time.sleep(0.05)

    def output_lines(self) -> list[str]:
        """Every line the process wrote, stdout then stderr."""
        return [
            line
            for path in (self.stdout, self.stderr)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace_s=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP exporter sent it (ids in hex, attributes as plain values)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0


def _any_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) trace receiver on loopback: what a collector would get.

    Decodes `ExportTraceServiceRequest` with opentelemetry-proto, as a real collector does.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> OtlpReceiver:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: _any_value(a.value) for a in resource_spans.resource.attributes
                        }
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append(
                                    ReceivedSpan(
                                        name=span.name,
                                        trace_id=span.trace_id.hex(),
                                        span_id=span.span_id.hex(),
                                        parent_span_id=span.parent_span_id.hex(),
                                        kind=span.kind,
                                        status_code=span.status.code,
                                        attributes={
                                            a.key: _any_value(a.value) for a in span.attributes
                                        },
                                        resource=resource,
                                        start_ns=span.start_time_unix_nano,
                                        end_ns=span.end_time_unix_nano,
                                    )
                                )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
