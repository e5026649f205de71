"""Every request has a bounded cost: label cardinality, redirects, suggestions, render failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import random_walk_bars
from gateway import snapshots


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


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine runs during the test (the real driver, counted)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


HEAVY_PAGE = "{ artifacts(first: 100) { edges { node { chart { snapshotBars } } } } }"


def test_a_query_over_its_cost_budget_is_refused_before_any_row_is_read(
    client: TestClient, insert: Callable[..., int], statements: list[str]
) -> None:
    insert(meta={"market_data_snapshot": random_walk_bars(50, seed=1)})
    statements.clear()
    body = client.post("/graphql", json={"query": HEAVY_PAGE}).json()
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["message"].startswith("query cost 2100 exceeds the budget of 1000")
    assert error["extensions"] == {"code": "QUERY_TOO_COSTLY"}
    assert not [s for s in statements if "artifacts" in s]


def test_aliases_and_variables_count_towards_the_cost(client: TestClient) -> None:
    aliased = (
        "{ "
        + " ".join(
            f"a{i}: artifacts(first: $n) {{ edges {{ node {{ metadata }} }} }}" for i in range(4)
        )
        + " }"
    )
    query = "query($n: Int) " + aliased
    over = client.post("/graphql", json={"query": query, "variables": {"n": 50}}).json()
    assert over["errors"][0]["message"].startswith("query cost 1200 exceeds")
    under = client.post("/graphql", json={"query": query, "variables": {"n": 10}}).json()
    assert "errors" not in under


def test_a_document_of_repeated_selections_is_refused_before_validation(
    client: TestClient,
) -> None:
    fields = " ".join("lineage { status }" for _ in range(430))
    body = client.post("/graphql", json={"query": f"{{ artifact(id: 1) {{ {fields} }} }}"}).json()
    assert body["errors"][0]["message"] == (
        "the document has 861 field selections; at most 100 are allowed"
    )


def test_a_rows_snapshot_is_parsed_once_however_many_aliases_ask(
    client: TestClient, insert: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[int] = []
    real = snapshots.load_snapshot

    def counting(obj: Any, **kwargs: Any) -> Any:
        parses.append(1)
        return real(obj, **kwargs)

    monkeypatch.setattr(snapshots, "load_snapshot", counting)
    artifact_id = insert(meta={"market_data_snapshot": random_walk_bars(50, seed=3)})
    aliases = " ".join(
        f"c{i}: chart {{ snapshotBars snapshotRange {{ first }} }}" for i in range(10)
    )
    body = client.post(
        "/graphql", json={"query": f"{{ artifact(id: {artifact_id}) {{ {aliases} }} }}"}
    ).json()
    assert body["data"]["artifact"]["c9"]["snapshotBars"] == 50
    assert len(parses) == 1
