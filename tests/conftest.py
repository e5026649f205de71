"""Fixture chain settings -> app -> client, on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.servers import MlflowServer, RedisServer, free_port, postgres_schema, s3_client
from tests.support import require_postgres, require_redis_server, with_overrides


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    require_postgres()
    with postgres_schema() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test database with the artifacts table created."""
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty local MLflow store with its schema created once per session.

    Creating a store runs MLflow's migrations (seconds); each test copies this file instead, so
    stores stay per test without every app start-up migrating one in a background thread.
    """
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def settings(database_url: str, tmp_path: Path, mlflow_store_template: Path) -> Settings:
    """Settings for one test: its own database, an MLflow store nobody else uses."""
    store = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_store_template, store)
    return Settings(
        database_url=database_url,
        mlflow_tracking_uri=f"sqlite:///{store}",
        env="development",
    )


@pytest.fixture
def app(settings: Settings) -> Starlette:
    """The gateway built from the test's settings."""
    return create_app(settings)


@pytest.fixture
def client(app: Starlette, engine: Engine) -> Iterator[TestClient]:
    """A client whose lifespan runs; the table exists before the first request."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def make_settings(settings: Settings) -> Callable[..., Settings]:
    """The test's settings with some fields replaced (names checked, values validated)."""

    def build(**overrides: Any) -> Settings:
        return with_overrides(settings, **overrides)

    return build


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], engine: Engine
) -> Iterator[Callable[..., TestClient]]:
    """Clients of apps built from the test's settings plus overrides; lifespans closed after."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def insert(engine: Engine) -> Callable[..., int]:
    """Insert one artifact row with sensible defaults; returns its id."""

    def _insert(**fields: Any) -> int:
        fields.setdefault("name", "artifact")
        fields.setdefault("artifact_type", "chart")
        with Session(engine) as session:
            row = Artifact(**fields)
            session.add(row)
            session.commit()
            assert row.id is not None
            return row.id

    return _insert


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event emitted during the test, as dicts, with context vars merged."""
    capture = structlog.testing.LogCapture()
    previous = structlog.get_config()["processors"]
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(processors=previous)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real `mlflow server` for the session (it takes ~15 s to start)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_proxy(mlflow_server: MlflowServer) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the real MLflow server, fresh for each test."""
    proxy = RecordingProxy(mlflow_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3-protocol server on loopback, standing in for MinIO; yields `host:port`."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real `redis-server` for the session, on a free loopback port."""
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the S3 server, for one test."""
    name = f"charts-{uuid.uuid4().hex[:10]}"
    s3_client(s3_server).make_bucket(name)
    return name


@pytest.fixture
def mlflow(mlflow_server: MlflowServer) -> MlflowClient:
    """A client of the session's real MLflow server."""
    return MlflowClient(tracking_uri=mlflow_server.url)


@pytest.fixture
def experiment(mlflow: MlflowClient) -> str:
    """A fresh experiment on the real MLflow server; returns its id."""
    return str(mlflow.create_experiment(f"exp-{uuid.uuid4().hex[:10]}"))


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs during the test (the real driver, counted)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)
