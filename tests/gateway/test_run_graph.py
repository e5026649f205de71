"""The run graph against a real `mlflow server`: Artifact.run, run(id), workflow(id), batching."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.gateway.test_lineage import gql
from tests.servers import free_port
from tests.support import UI, lineage_settings

SEARCHES = "/api/2.0/mlflow/runs/search"
# Each entry of a run's params, metrics and tags costs 1: a page of 40 runs asks for 5 of each
# (these runs hold at most 3) to stay within the default cost budget.
RUN_FIELDS = """
    id name status startTime endTime experimentId experimentName url params(first: 5) { key value }
    metrics(first: 5) { key value step timestamp } tags(first: 5) { key value }
"""
PAGE = f"{{ artifacts(first: 40) {{ edges {{ node {{ id runId run {{ {RUN_FIELDS} }} }} }} }} }}"


@pytest.fixture
def client(settings: Settings, mlflow_proxy: RecordingProxy) -> Iterator[TestClient]:
    app = create_app(lineage_settings(settings, mlflow_proxy.url))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def logged_run(
    mlflow: MlflowClient,
    experiment: str,
    *,
    workflow_id: str | None = None,
    start_ms: int,
    params: dict[str, str] | None = None,
    metrics: dict[str, list[tuple[float, int]]] | None = None,
    status: str = "FINISHED",
    name: str | None = None,
) -> str:
    """A run with params, metric histories (value, step) and tags, started at `start_ms`."""
    tags = {"workflow_id": workflow_id} if workflow_id else {}
    run = mlflow.create_run(
        experiment, tags={**tags, "team": "quant"}, start_time=start_ms, run_name=name
    )
    run_id = str(run.info.run_id)
    history = [
        Metric(key, value, start_ms + step, step)
        for key, points in (metrics or {}).items()
        for value, step in points
    ]
    mlflow.log_batch(
        run_id,
        metrics=history,
        params=[Param(k, v) for k, v in (params or {}).items()],
        tags=[RunTag("note", "made by a test")],
    )
    mlflow.set_terminated(run_id, status=status, end_time=start_ms + 60_000)
    return run_id


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


T0 = ms(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))


def iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC).isoformat()


def test_a_page_of_32_artifacts_over_3_workflows_costs_at_most_5_searches_cold_and_none_warm(
    experiment: str,  # (before the app: its start-up experiment list holds it)
    mlflow: MlflowClient,
    client: TestClient,
    insert: Callable[..., int],
    mlflow_proxy: RecordingProxy,
) -> None:
    workflows = [f"wf-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    latest = {
        wf: logged_run(
            mlflow,
            experiment,
            workflow_id=wf,
            start_ms=T0 + i * 1000,
            params={"symbol": f"S{i}", "window": "20"},
            metrics={"sharpe": [(0.5, 0), (1.25 + i, 1)], "drawdown": [(-0.1, 0)]},
            name=f"train-{i}",
        )
        for i, wf in enumerate(workflows)
    }
    stored = logged_run(
        mlflow, experiment, start_ms=T0, params={"lr": "0.01"}, status="FAILED", name="stored"
    )
    by_metadata = logged_run(mlflow, experiment, start_ms=T0, metrics={"loss": [(0.3, 7)]})
    expected: dict[int, str] = {}
    for i in range(26):  # legacy rows: their workflow's latest run
        expected[insert(name=f"legacy {i}", workflow_id=workflows[i % 3])] = latest[
            workflows[i % 3]
        ]
    for i in range(3):  # rows that store their run
        expected[insert(name=f"stored {i}", run_id=stored, experiment_id=experiment)] = stored
    for i in range(3):  # rows that name it in metadata
        expected[insert(name=f"meta {i}", meta={"mlflow_run_id": by_metadata})] = by_metadata
    mlflow_proxy.reset()

    edges = gql(client, PAGE)["artifacts"]["edges"]
    assert len(edges) == 32
    runs = {e["node"]["id"]: e["node"]["run"] for e in edges}
    assert {i: run["id"] for i, run in runs.items()} == expected
    assert len(mlflow_proxy.bodies(SEARCHES)) <= 5
    assert mlflow_proxy.paths("/api/2.0/mlflow/runs/get") == []

    first_latest = next(run for run in runs.values() if run["id"] == latest[workflows[1]])
    experiment_name = mlflow.get_experiment(experiment).name
    assert first_latest == {
        "id": latest[workflows[1]],
        "name": "train-1",
        "status": "FINISHED",
        "startTime": iso(T0 + 1000),
        "endTime": iso(T0 + 1000 + 60_000),
        "experimentId": experiment,
        "experimentName": experiment_name,
        "url": f"{UI}/#/experiments/{experiment}/runs/{latest[workflows[1]]}",
        "params": [{"key": "symbol", "value": "S1"}, {"key": "window", "value": "20"}],
        "metrics": [
            {"key": "drawdown", "value": -0.1, "step": 0, "timestamp": iso(T0 + 1000)},
            {"key": "sharpe", "value": 2.25, "step": 1, "timestamp": iso(T0 + 1001)},
        ],
        "tags": [
            {"key": "note", "value": "made by a test"},
            {"key": "team", "value": "quant"},
            {"key": "workflow_id", "value": workflows[1]},
        ],
    }
    stored_run = next(run for run in runs.values() if run["id"] == stored)
    assert (stored_run["status"], stored_run["params"]) == (
        "FAILED",
        [{"key": "lr", "value": "0.01"}],
    )
    meta_run = next(run for run in runs.values() if run["id"] == by_metadata)
    assert meta_run["metrics"] == [
        {"key": "loss", "value": 0.3, "step": 7, "timestamp": iso(T0 + 7)}
    ]

    mlflow_proxy.reset()
    again = gql(client, PAGE)["artifacts"]["edges"]
    assert again == edges
    assert mlflow_proxy.paths("/api/2.0/mlflow/") == []


def test_a_runs_artifacts_are_its_stored_rows_and_for_the_latest_run_its_workflows_legacy_rows(
    experiment: str,
    mlflow: MlflowClient,
    client: TestClient,
    insert: Callable[..., int],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    older = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0)
    newer = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0 + 5000)
    other = logged_run(mlflow, experiment, start_ms=T0)
    legacy = [insert(name=f"legacy {i}", workflow_id=wf) for i in range(3)]
    stores_older = [insert(name=f"older {i}", run_id=older, workflow_id=wf) for i in range(2)]
    stores_newer = insert(name="newer", run_id=newer, experiment_id=experiment)
    # Of the workflow, but its metadata names another run: that run is its lineage.
    elsewhere = insert(name="elsewhere", workflow_id=wf, meta={"mlflow_run_id": other})
    insert(name="unrelated", workflow_id="wf-someone-else")
    query = """query($id: String!, $after: String) { run(id: $id) {
        id artifacts(first: 2, after: $after) {
            edges { cursor node { id runId lineage { source } } }
            pageInfo { hasNextPage endCursor } } } }"""

    def walk(run_id: str) -> list[int]:
        ids, after = [], None
        while True:
            page = gql(client, query, id=run_id, after=after)["run"]["artifacts"]
            ids += [edge["node"]["id"] for edge in page["edges"]]
            assert all(edge["node"]["runId"] == run_id for edge in page["edges"])
            if not page["pageInfo"]["hasNextPage"]:
                return ids
            after = page["pageInfo"]["endCursor"]

    assert walk(newer) == sorted([*legacy, stores_newer])
    assert walk(older) == stores_older
    assert walk(other) == [elsewhere]


def test_a_workflow_counts_its_rows_and_lists_its_runs_newest_first(
    experiment: str,
    mlflow: MlflowClient,
    client: TestClient,
    insert: Callable[..., int],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    runs = [
        logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0 + i * 1000) for i in range(3)
    ]
    for i in range(4):
        insert(name=f"legacy {i}", workflow_id=wf)
    insert(name="linked", workflow_id=wf, run_id=runs[0], experiment_id=experiment)
    insert(name="by metadata", meta={"workflow_id": wf})  # the workflow, named in metadata
    insert(name="other", workflow_id="wf-other")
    data = gql(
        client,
        """query($id: String!) { workflow(id: $id) { id artifactCount missingLineage
            lineageCompleteness runs { id } artifacts(first: 10) { edges { node { name } } } } }""",
        id=wf,
    )["workflow"]
    assert data["id"] == wf
    assert (data["artifactCount"], data["missingLineage"]) == (6, 5)
    assert data["lineageCompleteness"] == pytest.approx(1 - 5 / 6)
    assert [run["id"] for run in data["runs"]] == runs[::-1]
    assert [e["node"]["name"] for e in data["artifacts"]["edges"]] == [
        "legacy 0",
        "legacy 1",
        "legacy 2",
        "legacy 3",
        "linked",
        "by metadata",
    ]
    assert gql(client, '{ workflow(id: "wf-nobody") { id } }')["workflow"] is None


def test_an_object_key_rows_run_is_shown_in_full(
    experiment: str,
    mlflow: MlflowClient,
    client: TestClient,
    insert: Callable[..., int],
) -> None:
    run_id = logged_run(mlflow, experiment, start_ms=T0, params={"k": "v"})
    artifact = insert(
        chart_data={"minio_url": f"s3://mlflow/{experiment}/{run_id}/artifacts/chart.png"}
    )
    data = gql(
        client,
        "query($id: Int!) { artifact(id: $id) { lineage { source } run { id params { key value } } } }",
        id=artifact,
    )["artifact"]
    assert data == {
        "lineage": {"source": "OBJECT_KEY"},
        "run": {"id": run_id, "params": [{"key": "k", "value": "v"}]},
    }
    assert gql(
        client,
        "query($id: String!) { run(id: $id) { artifacts { edges { node { id } } } } }",
        id=run_id,
    )["run"]["artifacts"]["edges"] == [{"node": {"id": artifact}}]


def test_a_run_mlflow_does_not_know_is_null_and_a_malformed_id_is_an_error(
    client: TestClient, insert: Callable[..., int], experiment: str
) -> None:
    unknown = uuid.uuid4().hex
    artifact = insert(run_id=unknown, experiment_id=experiment)
    data = gql(
        client,
        "query($run: String!, $a: Int!) { run(id: $run) { id } artifact(id: $a) { runId run { id } } }",
        run=unknown,
        a=artifact,
    )
    assert data == {"run": None, "artifact": {"runId": unknown, "run": None}}
    response = client.post("/graphql", json={"query": '{ run(id: "x\' OR 1=1") { id } }'})
    body = response.json()
    assert response.status_code == 200
    assert body["data"] == {"run": None}
    assert "run id must be" in body["errors"][0]["message"]


def test_mlflow_down_fails_only_the_run_fields_with_a_code_and_no_500(
    settings: Settings, insert: Callable[..., int], experiment: str
) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_app(lineage_settings(settings, nothing, mlflow_timeout_s=0.5))
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    stored = insert(
        name="stored", run_id=uuid.uuid4().hex, experiment_id=experiment, workflow_id=wf
    )
    legacy = insert(name="legacy", workflow_id=wf)
    query = """query($a: Int!, $b: Int!, $run: String!, $wf: String!) {
        a: artifact(id: $a) { name run { id } }
        b: artifact(id: $b) { name run { id } }
        run(id: $run) { id }
        workflow(id: $wf) { artifactCount runs { id } } }"""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        started = time.monotonic()
        response = test_client.post(
            "/graphql",
            json={
                "query": query,
                "variables": {"a": stored, "b": legacy, "run": "a" * 32, "wf": wf},
            },
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = json.loads(response.text)
    assert body["data"] == {
        "a": {"name": "stored", "run": None},
        "b": {"name": "legacy", "run": None},
        "run": None,
        "workflow": None,
    }
    failed = {tuple(error["path"]): error for error in body["errors"]}
    assert set(failed) == {("a", "run"), ("b", "run"), ("run",), ("workflow", "runs")}
    for error in failed.values():
        assert error["extensions"] == {"code": "MLFLOW_UNAVAILABLE"}
        assert "MLflow" in error["message"]
    # Each lookup is bounded by the MLflow budget (twice the timeout per batch); the waves
    # are few: far less than a hung worker.
    assert elapsed < 4 * (2 * 0.5) + 3, elapsed


def gauge_samples(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("gateway_workflow_missing_lineage{"):
            labels, value = line.rsplit(" ", 1)
            samples[labels.split('"')[1]] = float(value)
    return samples


def test_the_missing_lineage_gauge_counts_the_largest_workflows_and_the_rest_as_other(
    settings: Settings, insert: Callable[..., int]
) -> None:
    for i in range(5):
        insert(name=f"big {i}", workflow_id="wf-big", run_id=None if i < 3 else "r" * 32)
    for i in range(3):
        insert(name=f"mid {i}", meta={"workflow_id": "wf-mid"})
    insert(name="small", workflow_id="wf-small")
    insert(name="no workflow")
    app = create_app(
        lineage_settings(settings, settings.mlflow_tracking_uri, lineage_gauge_workflows=2)
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 30
        while not (samples := gauge_samples(test_client)):
            assert time.monotonic() < deadline, "the gauge was never set"
            time.sleep(0.05)
    assert samples == {"wf-big": 3, "wf-mid": 3, "other": 2}


def test_a_workflows_runs_in_an_experiment_created_after_the_listing_are_found(
    client: TestClient, mlflow: MlflowClient, insert: Callable[..., int]
) -> None:
    gql(client, "{ artifacts(first: 1) { edges { node { id } } } }")  # the app has listed
    late = str(mlflow.create_experiment(f"late-{uuid.uuid4().hex[:8]}"))
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = logged_run(mlflow, late, workflow_id=wf, start_ms=T0)
    artifact = insert(name="legacy", workflow_id=wf)
    data = gql(
        client,
        "query($wf: String!, $a: Int!) { workflow(id: $wf) { runs { id experimentId } } "
        "artifact(id: $a) { lineage { status } run { id } } }",
        wf=wf,
        a=artifact,
    )
    assert data["workflow"]["runs"] == [{"id": run_id, "experimentId": late}]
    assert data["artifact"] == {"lineage": {"status": "HYDRATED"}, "run": {"id": run_id}}
