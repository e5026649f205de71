"""Reads load what the selection needs: list pages never decode the snapshots they do not show."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pebble import ProcessExpired
from sqlmodel import Session
from starlette.testclient import TestClient

from chartkit import random_walk_bars
from gateway import db, images, models, strictjson, workers
from gateway.restricted import read_metadata_text


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Characters of stored JSON the serving process decodes (both databases' read paths)."""
    sizes: list[int] = []
    real = models.loads_stored

    def counting(raw: Any) -> Any:
        sizes.append(len(raw))
        return real(raw)

    monkeypatch.setattr(models, "loads_stored", counting)  # SQLite: the column type
    monkeypatch.setattr(db, "loads_stored", counting)  # PostgreSQL: the driver's JSON loader
    return sizes


def chart_rows(insert: Callable[..., int], count: int) -> list[int]:
    return [
        insert(
            name=f"c{seed}",
            meta={
                "market_data_snapshot": random_walk_bars(500, seed=seed),  # ~36 KB as text
                "workflow_id": f"wf-{seed}",
                "chart_spec": {"symbol": f"S{seed}"},
                "minio_url": f"s3://charts/c{seed}.png",
            },
        )
        for seed in range(count)
    ]


def test_a_list_page_reads_the_small_keys_without_decoding_snapshots(
    make_client: Callable[..., TestClient], insert: Callable[..., int], decoded: list[int]
) -> None:
    client = make_client()
    chart_rows(insert, 5)
    decoded.clear()
    query = (
        "{ artifacts { edges { node { name workflowId "
        "chart { spec objectKey } lineage { status } } } } }"
    )
    body = client.post("/graphql", json={"query": query}).json()
    nodes = [edge["node"] for edge in body["data"]["artifacts"]["edges"]]
    assert [n["workflowId"] for n in nodes] == [f"wf-{i}" for i in range(5)]
    assert [n["chart"]["spec"] for n in nodes] == [{"symbol": f"S{i}"} for i in range(5)]
    assert [n["chart"]["objectKey"] for n in nodes] == [f"c{i}.png" for i in range(5)]
    assert sum(decoded) < 5 * 500, f"{sum(decoded)} characters decoded for a page of names"


def test_the_ui_list_decodes_no_snapshot(
    make_client: Callable[..., TestClient], insert: Callable[..., int], decoded: list[int]
) -> None:
    client = make_client()
    chart_rows(insert, 5)
    decoded.clear()
    page = client.get("/ui/artifacts")
    assert page.status_code == 200
    assert all(f"wf-{i}" in page.text for i in range(5))
    assert sum(decoded) < 5 * 500


def test_summaries_and_metadata_of_listed_rows_match_the_row_read_whole(
    make_client: Callable[..., TestClient], insert: Callable[..., int]
) -> None:
    client = make_client()
    ids = chart_rows(insert, 3)
    fields = "id metadata chart { snapshotBars snapshotRange { first last } }"
    listed = client.post(
        "/graphql",
        json={"query": f"{{ artifacts(first: 3) {{ edges {{ node {{ {fields} }} }} }} }}"},
    ).json()
    for edge, artifact_id in zip(listed["data"]["artifacts"]["edges"], ids, strict=True):
        whole = client.post(
            "/graphql", json={"query": f"{{ artifact(id: {artifact_id}) {{ {fields} }} }}"}
        ).json()
        assert edge["node"] == whole["data"]["artifact"]
        assert edge["node"]["chart"]["snapshotBars"] == 500
        assert len(edge["node"]["metadata"]["market_data_snapshot"]) == 500


def test_cached_charts_and_304s_neither_decode_nor_hash_the_snapshot_again(
    make_client: Callable[..., TestClient],
    insert: Callable[..., int],
    decoded: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed: list[int] = []
    real_fingerprint = images.render_fingerprint

    def counting(snapshot: Any, spec: Any) -> str:
        hashed.append(1)
        return real_fingerprint(snapshot, spec)

    monkeypatch.setattr(images, "render_fingerprint", counting)
    client = make_client()
    (artifact_id,) = chart_rows(insert, 1)
    first = client.get(f"/api/artifacts/{artifact_id}/image")
    assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
    assert len(hashed) == 1
    decoded.clear()
    again = client.get(f"/api/artifacts/{artifact_id}/image")
    assert (again.content, again.headers["x-cache"]) == (first.content, "hit")
    unchanged = client.get(
        f"/api/artifacts/{artifact_id}/image", headers={"If-None-Match": first.headers["etag"]}
    )
    assert unchanged.status_code == 304
    assert len(hashed) == 1
    assert sum(decoded) < 2 * 500, f"{sum(decoded)} characters decoded for a cached chart"


def artifact_selects(statements: list[str]) -> list[str]:
    return [
        s for s in statements if "FROM artifacts" in s and s.lstrip().upper().startswith("SELECT")
    ]


@pytest.mark.parametrize(
    ("node", "reads_json"),
    [
        ("id name type symbol createdAt imageUrl __typename", False),
        ("id ... on Artifact { name }", False),
        ("id workflowId", True),
        ("id lineage { status }", True),
        ("id ... on Artifact { chartData }", True),
        ("id x: chart { spec }", True),
    ],
)
def test_a_page_reads_its_json_columns_only_when_its_nodes_show_them(
    client: TestClient,
    insert: Callable[..., int],
    statements: list[str],
    node: str,
    reads_json: bool,
) -> None:
    chart_rows(insert, 2)
    statements.clear()
    body = client.post(
        "/graphql", json={"query": f"{{ artifacts(first: 2) {{ edges {{ node {{ {node} }} }} }} }}"}
    ).json()
    assert "errors" not in body
    assert len(body["data"]["artifacts"]["edges"]) == 2
    (page,) = artifact_selects(statements)
    assert ("artifacts.metadata" in page) == reads_json
    assert ("artifacts.chart_data" in page) == reads_json


def test_a_chart_served_in_the_last_30_s_is_served_again_without_reading_the_row(
    client: TestClient, insert: Callable[..., int], statements: list[str]
) -> None:
    (artifact_id,) = chart_rows(insert, 1)
    first = client.get(f"/api/artifacts/{artifact_id}/image")
    assert first.status_code == 200
    statements.clear()
    again = client.get(f"/api/artifacts/{artifact_id}/image")
    unchanged = client.get(
        f"/api/artifacts/{artifact_id}/image", headers={"If-None-Match": first.headers["etag"]}
    )
    assert (again.status_code, again.content, again.headers["x-cache"]) == (
        200,
        first.content,
        "hit",
    )
    assert again.headers["etag"] == first.headers["etag"]
    assert unchanged.status_code == 304
    assert artifact_selects(statements) == []
    other_source = client.get(f"/api/artifacts/{artifact_id}/image?source=minio")
    assert other_source.status_code == 404  # another source is its own question: row read
    assert len(artifact_selects(statements)) == 1


@pytest.fixture
def restricted_in_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Characters of stored metadata text sent to a worker process to be read."""
    sizes: list[int] = []
    real = workers.WorkerPool.run

    async def counting(self: workers.WorkerPool, function: Any, *args: Any, **kwargs: Any) -> Any:
        if function is read_metadata_text:
            sizes.append(len(args[0]))
        return await real(self, function, *args, **kwargs)

    monkeypatch.setattr(workers.WorkerPool, "run", counting)
    return sizes


def test_the_rest_document_decodes_no_snapshot_in_the_serving_process(
    client: TestClient, insert: Callable[..., int], decoded: list[int]
) -> None:
    (artifact_id,) = chart_rows(insert, 1)
    decoded.clear()
    body = client.get(f"/api/artifacts/{artifact_id}").json()
    assert len(body["metadata"]["market_data_snapshot"]) == 500
    assert body["workflow_id"] == "wf-0"
    assert sum(decoded) < 500, f"{sum(decoded)} characters decoded for one document"


def test_the_rest_document_is_the_whole_row_encoded_byte_for_byte(
    client: TestClient, insert: Callable[..., int], engine: Any
) -> None:
    (artifact_id,) = chart_rows(insert, 1)
    served = client.get(f"/api/artifacts/{artifact_id}")
    assert served.status_code == 200
    with Session(engine) as session:
        whole = session.get(models.Artifact, artifact_id)
        assert whole is not None
        assert "market_data_snapshot" in whole.meta
        expected = {**served.json(), "metadata": whole.meta}
    assert served.content == strictjson.dumps_bytes(expected)


def test_a_stored_metadata_text_is_made_strict_once_per_process(
    make_client: Callable[..., TestClient],
    insert: Callable[..., int],
    restricted_in_workers: list[int],
) -> None:
    client = make_client(answer_cache_s=0)  # every read reaches the route
    first, second = chart_rows(insert, 2)
    bodies = [client.get(f"/api/artifacts/{i}").content for i in (first, second, first, second)]
    assert bodies[2:] == bodies[:2]
    assert bodies[0] != bodies[1]
    assert len(restricted_in_workers) == 2, "each distinct text once"
    graphql = client.post("/graphql", json={"query": f"{{ artifact(id: {first}) {{ metadata }} }}"})
    assert "errors" not in graphql.json(), graphql.json()
    assert graphql.json()["data"]["artifact"]["metadata"] == json.loads(bodies[0])["metadata"]
    assert len(restricted_in_workers) == 2, "GraphQL's whole metadata shares what REST made"


def test_a_changed_metadata_is_served_on_the_next_read(
    make_client: Callable[..., TestClient], insert: Callable[..., int], engine: Any
) -> None:
    client = make_client(answer_cache_s=0)
    (artifact_id,) = chart_rows(insert, 1)
    assert client.get(f"/api/artifacts/{artifact_id}").json()["metadata"]["workflow_id"] == "wf-0"
    with Session(engine) as session:
        row = session.get(models.Artifact, artifact_id)
        assert row is not None
        row.meta = {**row.meta, "workflow_id": "wf-changed"}
        session.add(row)
        session.commit()
    again = client.get(f"/api/artifacts/{artifact_id}").json()
    assert (again["metadata"]["workflow_id"], again["workflow_id"]) == ("wf-changed",) * 2


def test_a_metadata_reader_that_dies_leaves_the_field_null_with_a_reason(
    make_client: Callable[..., TestClient],
    insert: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(answer_cache_s=0)
    (artifact_id,) = chart_rows(insert, 1)

    async def dying(self: workers.WorkerPool, function: Any, *args: Any, **kwargs: Any) -> Any:
        raise ProcessExpired("Abnormal termination", code=-9)

    monkeypatch.setattr(workers.WorkerPool, "run", dying)
    served = client.get(f"/api/artifacts/{artifact_id}")
    assert served.status_code == 200
    body = served.json()
    assert (body["name"], body["metadata"]) == ("c0", None)
    assert body["field_errors"] == {"metadata": "metadata could not be read just now"}
    monkeypatch.undo()
    again = client.get(f"/api/artifacts/{artifact_id}").json()
    assert "field_errors" not in again
    assert len(again["metadata"]["market_data_snapshot"]) == 500
