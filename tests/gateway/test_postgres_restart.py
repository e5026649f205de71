"""PostgreSQL going away and coming back while the gateway serves (PostgreSQL only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import Session
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.settings import Settings
from tests.faults import TcpProxy
from tests.servers import postgres_schema
from tests.support import require_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url() -> Iterator[str]:
    require_postgres()
    with postgres_schema() as url:
        yield url


def test_postgres_going_away_gives_fast_503s_and_the_gateway_recovers(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    init_db(engine)
    with Session(engine) as session:
        row = Artifact(name="survivor", artifact_type="llm")
        session.add(row)
        session.commit()
        artifact_id = row.id
    engine.dispose()
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # Kept answers off: every read here must reach the database (a kept one would be a 200).
    settings = Settings(
        database_url=proxied,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
        answer_cache_s=0,
    )
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.get(f"/api/artifacts/{artifact_id}").status_code == 200
            proxy.stop()  # every pooled connection is reset, new ones are refused
            started = time.monotonic()
            assert client.get("/readyz").status_code == 503
            failed = client.get(f"/api/artifacts/{artifact_id}")
            body = client.post("/graphql", json={"query": "{ artifacts { edges { cursor } } }"})
            assert time.monotonic() - started < 10
            assert failed.status_code == 503
            assert failed.json()["detail"] == "the database is unavailable"
            assert body.json()["errors"][0]["message"] == "the database is unavailable"
            proxy.start()  # the database is back; the app is not restarted
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/api/artifacts/{artifact_id}").json()["name"] == "survivor"
    finally:
        proxy.stop()
