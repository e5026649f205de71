"""REST: artifact JSON for existing clients, problem documents, health, readiness, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings


def test_rest_artifact_uses_snake_case_keys(client: TestClient, insert: Callable[..., int]) -> None:
    artifact_id = insert(
        name="NVDA chart",
        symbol="NVDA",
        run_id="abc",
        experiment_id="3",
        chart_data={"minio_url": "s3://charts/x.png"},
        meta={"dag_run_id": "d1"},
    )
    response = client.get(f"/api/artifacts/{artifact_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == artifact_id
    assert body["run_id"] == "abc"
    assert body["experiment_id"] == "3"
    assert body["chart_data"] == {"minio_url": "s3://charts/x.png"}
    assert body["metadata"] == {"dag_run_id": "d1"}
    assert body["workflow_id"] == "d1"
    assert body["image_url"] == f"/api/artifacts/{artifact_id}/image"


@pytest.mark.parametrize("raw", ["x", "-1", "0", "1.5", "99999999999999999999", "%20", "1e3", "٣"])
def test_malformed_ids_get_400_problem(client: TestClient, raw: str) -> None:
    response = client.get(f"/api/artifacts/{raw}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "positive integer" in response.json()["detail"]


def test_unknown_id_gets_404_problem(client: TestClient) -> None:
    response = client.get("/api/artifacts/424242")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "artifact 424242 does not exist"


def test_unknown_route_is_a_problem_document(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok", "redis": "off"}


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Any) -> None:
    # A port nothing listens on: PostgreSQL refuses at once, the probe answers 503.
    from tests.servers import free_port

    settings = Settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert client.get("/healthz").status_code == 200
        failed = client.get("/api/artifacts/1")
        assert failed.status_code == 503
        assert failed.json()["detail"] == "the database is unavailable"
        gql = client.post("/graphql", json={"query": "{ artifact(id: 1) { id } }"}).json()
        assert gql["errors"][0]["message"] == "the database is unavailable"


def test_request_id_is_echoed_and_bound_to_log_lines(
    client: TestClient, log_events: list[dict[str, Any]]
) -> None:
    response = client.get("/api/artifacts/5", headers={"x-request-id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    access = [e for e in log_events if e["event"] == "http.request"]
    assert access
    assert access[-1]["request_id"] == "trace-123"
    assert access[-1]["route"] == "/api/artifacts/{artifact_id}"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32


def test_hostile_request_id_is_replaced(client: TestClient) -> None:
    hostile = "a b<script>" + "x" * 200
    response = client.get("/healthz", headers={"x-request-id": hostile})
    assert len(response.headers["x-request-id"]) == 32
    assert "<" not in response.headers["x-request-id"]


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.get("/api/artifacts/1")
    client.get("/api/artifacts/2")
    text = client.get("/metrics").text
    line = 'gateway_http_requests_total{method="GET",route="/api/artifacts/{artifact_id}",status="404"} 2.0'
    assert line in text
    assert "gateway_http_request_duration_seconds_bucket" in text
