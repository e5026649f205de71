"""The log stream: one strict JSON object per line, and the request id a 500 tells clients to quote."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.jsonstrict import strict_parse
from tests.servers import GatewayProcess


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # The fault used here (a table dropped under a running app) is a bug, not an outage, on
    # SQLite; PostgreSQL's restart and reset faults are covered by test_postgres_restart.
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def drop_table(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE artifacts"))


def test_an_unexpected_error_is_logged_with_the_request_id_the_client_quotes(
    client: TestClient,
    engine: Engine,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    artifact_id = insert()
    drop_table(engine)
    response = client.get(f"/api/artifacts/{artifact_id}", headers={"x-request-id": "quote-me-1"})
    assert response.status_code == 500
    body = strict_parse(response.content)
    assert body["request_id"] == "quote-me-1"
    assert response.headers["x-request-id"] == "quote-me-1"
    assert "Traceback" not in response.text
    errors = [e for e in log_events if e["event"] == "http.unexpected_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "quote-me-1"
    access = [e for e in log_events if e["event"] == "http.request"]
    assert access[-1]["status"] == 500
    assert access[-1]["request_id"] == "quote-me-1"


def test_an_unexpected_error_on_a_page_is_an_html_page(
    client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    artifact_id = insert()
    drop_table(engine)
    response = client.get(f"/ui/artifacts/{artifact_id}", headers={"x-request-id": "page-2"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "request id page-2" in response.text


def test_gateway_serve_writes_one_json_object_per_line_with_request_ids(tmp_path: Path) -> None:
    database = tmp_path / "gw.db"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GATEWAY_LOG_FORMAT": "json",
    }
    with GatewayProcess(tmp_path, env) as gateway:
        gateway.wait_until_listening()
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            assert http.get("/api/artifacts/1").status_code == 404
            with sqlite3.connect(database) as conn:
                conn.execute("DROP TABLE artifacts")
            failed = http.get("/api/artifacts/1", headers={"x-request-id": "quote-me-3"})
            assert failed.status_code == 500
            assert failed.json()["request_id"] == "quote-me-3"
            # Until the fresh MLflow store has opened: MLflow logs its migrations meanwhile.
            deadline = time.monotonic() + 120
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the MLflow store never opened"
        gateway.stop()
        lines = gateway.output_lines()
    events = [strict_parse(line.encode()) for line in lines]  # every line is one JSON object
    assert all(isinstance(event, dict) and "event" in event for event in events)
    assert not any("Exception in ASGI application" in line for line in lines)
    names = [event["event"] for event in events]
    assert "Application startup complete." in names  # uvicorn's own lines, as JSON
    errors = [e for e in events if e["event"] == "http.unexpected_error"]
    assert [e["request_id"] for e in errors] == ["quote-me-3"]
    assert errors[0]["exception"]  # the traceback, as data
    requests = [e for e in events if e["event"] == "http.request"]
    assert all(e["request_id"] for e in requests)
    assert [e["status"] for e in requests if e["request_id"] == "quote-me-3"] == [500]
