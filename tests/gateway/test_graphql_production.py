"""Production mode: no GraphiQL, no introspection, unexpected errors masked but logged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # SQLite only: it lets a test store a timestamp no driver can parse, as foreign writers do.
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def production_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(env="production")


def messages(body: dict[str, Any]) -> list[str]:
    return [e["message"] for e in body.get("errors") or []]


def test_production_serves_no_graphiql(production_client: TestClient) -> None:
    page = production_client.get("/graphql", headers={"accept": "text/html"})
    assert "graphiql" not in page.text.lower()


def test_production_refuses_introspection(production_client: TestClient) -> None:
    body = production_client.post("/graphql", json={"query": "{ __schema { types { name } } }"})
    assert any("introspection" in m.lower() for m in messages(body.json()))


def test_production_keeps_client_error_messages(production_client: TestClient) -> None:
    body = production_client.post("/graphql", json={"query": "{ artifact(id: -5) { id } }"})
    assert messages(body.json()) == ["id must be a positive integer"]


def test_production_masks_unexpected_errors_and_logs_them_with_the_request_id(
    production_client: TestClient,
    engine: Engine,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    artifact_id = insert(name="corrupt")
    # Schema drift (a column renamed under the gateway) is a bug, not a client mistake.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE artifacts RENAME COLUMN symbol TO ticker"))
    response = production_client.post(
        "/graphql",
        json={"query": "{ artifact(id: %d) { id symbol } }" % artifact_id},
        headers={"x-request-id": "req-mask-1"},
    )
    assert response.status_code == 200
    body = response.json()
    assert messages(body) == ["Unexpected error."]
    assert "Traceback" not in response.text
    assert "no such column" not in response.text
    logged = [e for e in log_events if e["event"] == "graphql.unexpected_error"]
    assert len(logged) == 1
    assert logged[0]["request_id"] == "req-mask-1"
    assert logged[0]["exc_info"] is not None


def test_a_stored_time_that_is_not_a_time_reads_as_null_and_the_rest_is_served(
    production_client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    good = insert(name="good")
    bad = insert(name="bad time")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE artifacts SET created_at = 'not a time' WHERE id = :id"), {"id": bad}
        )
    body = production_client.post(
        "/graphql", json={"query": "{ artifacts { edges { node { id name createdAt } } } }"}
    ).json()
    assert "errors" not in body
    nodes = {n["node"]["id"]: n["node"] for n in body["data"]["artifacts"]["edges"]}
    assert nodes[bad] == {"id": bad, "name": "bad time", "createdAt": None}
    assert nodes[good]["createdAt"].endswith("+00:00")
    rest = production_client.get(f"/api/artifacts/{bad}")
    assert rest.status_code == 200
    assert rest.json()["created_at"] is None
