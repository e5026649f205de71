"""Rows written by others with odd data: reads return what they can, images fall back or say why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import ChartSpec, random_walk_bars, render_chart
from tests.jsonstrict import strict_parse

BARS = random_walk_bars(60, seed=8)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # SQLite: it stores what PostgreSQL's JSON type would refuse (NaN), as foreign writers do.
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_snapshot_bars=1000)


def raw_metadata(engine: Engine, artifact_id: int, raw_json: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE artifacts SET metadata = :m WHERE id = :id"),
            {"m": raw_json, "id": artifact_id},
        )


def read_all(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.post(
        "/graphql",
        json={
            "query": "{ artifacts { edges { node { id type metadata imageUrl workflowId "
            "lineage { status reason } } } } }"
        },
    ).json()
    return body


def test_metadata_that_is_not_an_object_is_read_and_has_no_chart(
    client: TestClient, insert: Callable[..., int]
) -> None:
    ids = [insert(meta="just a string"), insert(meta=[1, 2, 3]), insert(meta=7)]
    body = read_all(client)
    assert "errors" not in body
    assert [e["node"]["metadata"] for e in body["data"]["artifacts"]["edges"]] == [
        "just a string",
        [1, 2, 3],
        7,
    ]
    for artifact_id in ids:
        response = client.get(f"/api/artifacts/{artifact_id}/image")
        assert response.status_code == 404
        assert "no snapshot" in response.json()["detail"]


def test_snapshot_stored_as_a_json_string_is_drawn(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(symbol="AAPL", meta={"market_data_snapshot": json.dumps(BARS)})
    response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.status_code == 200
    assert response.content == render_chart(BARS, ChartSpec(symbol="AAPL"))


@pytest.mark.parametrize(
    ("snapshot_json", "detail"),
    [
        ('"not json at all"', "not JSON"),
        # JSON has no NaN: a stored NaN reads as null (gateway.strictjson), so the bar says so.
        (json.dumps([{**BARS[0], "close": "NaN"}]).replace('"NaN"', "NaN"), "close is null"),
        (
            json.dumps([{**BARS[0], "high": "Infinity"}]).replace('"Infinity"', "Infinity"),
            "high is null",
        ),
        ('[{"t": 1}]', "has no 'open'"),
        ("[1, 2, 3]", "not an object"),
    ],
)
def test_undrawable_snapshots_get_422_with_the_reason(
    client: TestClient,
    engine: Engine,
    insert: Callable[..., int],
    snapshot_json: str,
    detail: str,
) -> None:
    artifact_id = insert()
    raw_metadata(engine, artifact_id, f'{{"market_data_snapshot": {snapshot_json}}}')
    response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert "errors" not in read_all(client)


def test_unsorted_and_duplicate_bars_draw_the_clean_series(
    client: TestClient, insert: Callable[..., int]
) -> None:
    messy = list(reversed(BARS)) + BARS[:5]
    artifact_id = insert(symbol="X", meta={"market_data_snapshot": messy})
    response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.content == render_chart(BARS, ChartSpec(symbol="X"))


def test_oversized_snapshots_are_refused_before_parsing(
    client: TestClient, insert: Callable[..., int], log_events: list[dict[str, Any]]
) -> None:
    artifact_id = insert(meta={"market_data_snapshot": random_walk_bars(1500)})
    response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.status_code == 422
    assert "snapshot has 1500 bars; at most 1000 are drawn" in response.json()["detail"]
    assert any(e.get("reason") == "snapshot_too_large" for e in log_events)


@pytest.mark.parametrize("minio_url", [{"bucket": "charts"}, ["s3://charts/x.png"], 42, "", None])
def test_odd_minio_url_shapes_fall_back_to_the_snapshot(
    client: TestClient, insert: Callable[..., int], minio_url: Any
) -> None:
    artifact_id = insert(chart_data={"minio_url": minio_url}, meta={"market_data_snapshot": BARS})
    response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.status_code == 200
    assert response.headers["x-chart-source"] == "regenerated"


def test_chart_data_that_is_not_an_object_is_served_as_is(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(chart_data="s3://charts/x.png", meta={"market_data_snapshot": BARS})
    body = client.get(f"/api/artifacts/{artifact_id}").json()
    assert body["chart_data"] == "s3://charts/x.png"
    assert client.get(f"/api/artifacts/{artifact_id}/image").status_code == 200


def test_json_columns_holding_text_that_is_not_json_read_as_that_text(
    client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    broken = insert(name="broken", workflow_id=None)
    fine = insert(name="fine", meta={"workflow_id": "wf-1"})
    raw_metadata(engine, broken, "{not json")
    body = read_all(client)
    assert "errors" not in body
    nodes = {e["node"]["id"]: e["node"] for e in body["data"]["artifacts"]["edges"]}
    assert nodes[broken]["metadata"] == "{not json"
    filtered = client.post(
        "/graphql", json={"query": '{ artifacts(workflowId: "wf-1") { edges { node { id } } } }'}
    ).json()
    assert filtered["data"]["artifacts"]["edges"] == [{"node": {"id": fine}}]
    assert client.get(f"/api/artifacts/{broken}").json()["metadata"] == "{not json"


def test_text_columns_holding_invalid_utf8_read_with_replacement_characters(
    client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    # SQLite keeps whatever bytes a writer gave it as TEXT (PostgreSQL refuses invalid UTF-8);
    # one such cell used to fail the whole query.
    artifact_id = insert(name="placeholder", symbol="X")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE artifacts SET name = CAST(x'41ff42' AS TEXT) WHERE id = :id"),
            {"id": artifact_id},
        )
    body = strict_parse(client.get(f"/api/artifacts/{artifact_id}").content)
    assert body["name"] == "A\ufffdB"
    listing = client.post("/graphql", json={"query": "{ artifacts { edges { node { name } } } }"})
    assert strict_parse(listing.content)["data"]["artifacts"]["edges"] == [
        {"node": {"name": "A\ufffdB"}}
    ]
    assert client.get("/ui/artifacts").status_code == 200
