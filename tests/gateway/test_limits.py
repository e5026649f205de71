"""Every request has a bounded cost: label cardinality, redirects, suggestions, render failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from chartkit import random_walk_bars


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # none of these limits is database-specific


def test_invented_http_methods_share_one_metric_label(client: TestClient) -> None:
    before = len(client.get("/metrics").text)
    for i in range(200):
        client.request(f"JUNK{i}", "/healthz")
    metrics = client.get("/metrics").text
    assert "JUNK" not in metrics
    assert 'method="OTHER"' in metrics
    assert len(metrics) < before + 4000  # a handful of series, not 200 new ones


def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(name="x")
    response = client.get(
        f"/api/artifacts/{artifact_id}/", headers={"host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "location" not in response.headers


def test_production_errors_make_no_schema_suggestions(
    make_client: Callable[..., TestClient],
) -> None:
    prod = make_client(env="production")
    body = prod.post("/graphql", json={"query": "{ artifactz(id: 1) { id } }"}).json()
    (error,) = body["errors"]
    assert "Cannot query field 'artifactz'" in error["message"]
    assert "Did you mean" not in error["message"]
    enum = prod.post("/graphql", json={"query": "{ artifacts(type: CHARTS) { edges { cursor } } }"})
    assert "Did you mean" not in enum.text
    dev = make_client().post("/graphql", json={"query": "{ artifactz(id: 1) { id } }"}).json()
    assert "Did you mean 'artifact'" in dev["errors"][0]["message"]  # helpful in development


def test_a_timed_out_render_is_remembered_not_retried_by_every_request(
    make_client: Callable[..., TestClient], insert: Callable[..., int]
) -> None:
    client = make_client(render_timeout_s=0.05)
    artifact_id = insert(meta={"market_data_snapshot": random_walk_bars(20_000, seed=1)})
    answers = [client.get(f"/api/artifacts/{artifact_id}/image") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert all(a.headers["retry-after"] == "1" for a in answers)
    assert all(a.json()["detail"] == "chart rendering timed out" for a in answers)
    assert "gateway_chart_render_seconds_count 1.0" in client.get("/metrics").text


def test_a_snapshot_that_fails_to_render_is_remembered(
    client: TestClient, insert: Callable[..., int]
) -> None:
    bars = random_walk_bars(30, seed=2)
    bars[7]["high"] = -1.0
    artifact_id = insert(meta={"market_data_snapshot": bars})
    answers = [client.get(f"/api/artifacts/{artifact_id}/image") for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 422]
    assert all("bar 7" in a.json()["detail"] for a in answers)
    assert "gateway_chart_render_seconds_count 1.0" in client.get("/metrics").text
