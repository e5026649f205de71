"""Lazy lineage on read against a real `mlflow server`: order, batching, caching, faults."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.lineage import Lineage, LineageStatus
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.services import RequestLineage, build_resolver
from gateway.settings import Settings
from tests.faults import RecordingProxy, SilentListener
from tests.servers import free_port
from tests.support import UI, experiments_listed, lineage_settings, make_run

LINEAGE = "lineage { status source reason runId experimentId runUrl experimentUrl }"


@pytest.fixture
def lineage_client(
    settings: Settings, engine: Engine, mlflow_proxy: RecordingProxy
) -> Iterator[TestClient]:
    # A generous lookup timeout: a shared 2-core CI box must not turn hits into UNAVAILABLE.
    app = create_app(lineage_settings(settings, mlflow_proxy.url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def gql(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body["data"]


def node(client: TestClient, artifact_id: int) -> dict[str, Any]:
    data = gql(
        client,
        f"query($id: Int!) {{ artifact(id: $id) {{ id name runId experimentId {LINEAGE} }} }}",
        id=artifact_id,
    )
    return data["artifact"]


def test_resolution_follows_the_design_order(
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    experiment: str,
    engine: Engine,
    log_events: list[dict[str, Any]],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    older = make_run(mlflow, experiment, workflow_id=wf, start_time=1_700_000_000_000)
    newer = make_run(mlflow, experiment, workflow_id=wf, start_time=1_700_000_500_000)
    meta_run = make_run(mlflow, experiment)
    stored = insert(run_id="r-stored", experiment_id="e-stored", workflow_id=wf)
    by_meta = insert(meta={"mlflow_run_id": meta_run}, workflow_id=wf)
    by_workflow = insert(workflow_id=wf)
    by_meta_workflow = insert(meta={"workflow_id": wf})
    ghost_then_workflow = insert(meta={"mlflow_run_id": "0" * 32}, workflow_id=wf)
    half = insert(run_id=meta_run)
    unknown_wf = insert(workflow_id=f"wf-none-{uuid.uuid4().hex[:6]}")
    nothing = insert(meta={"source": "legacy"})

    n = node(lineage_client, stored)
    assert (n["runId"], n["lineage"]["status"], n["lineage"]["source"]) == (
        "r-stored",
        "STORED",
        "ROW",
    )

    n = node(lineage_client, by_meta)
    assert (n["runId"], n["experimentId"]) == (meta_run, experiment), n["lineage"]
    assert (n["lineage"]["status"], n["lineage"]["source"]) == ("HYDRATED", "METADATA_RUN_ID")
    assert n["lineage"]["runUrl"] == f"{UI}/#/experiments/{experiment}/runs/{meta_run}"
    assert n["lineage"]["experimentUrl"] == f"{UI}/#/experiments/{experiment}"

    for artifact_id in (by_workflow, by_meta_workflow, ghost_then_workflow):
        n = node(lineage_client, artifact_id)
        assert n["runId"] == newer != older  # latest by start time
        assert (n["lineage"]["status"], n["lineage"]["source"]) == ("HYDRATED", "WORKFLOW_TAG")

    n = node(lineage_client, half)
    assert (n["runId"], n["experimentId"], n["lineage"]["source"]) == (meta_run, experiment, "ROW")

    n = node(lineage_client, unknown_wf)
    assert n["runId"] is None
    assert n["lineage"]["status"] == "UNRESOLVED"
    assert n["lineage"]["reason"].startswith("no MLflow run tagged workflow_id=wf-none-")

    n = node(lineage_client, nothing)
    assert n["lineage"] == {
        "status": "UNRESOLVED",
        "source": None,
        "reason": "artifact has no run id and no workflow id",
        "runId": None,
        "experimentId": None,
        "runUrl": None,
        "experimentUrl": None,
    }

    # Reads never write.
    with Session(engine) as session:
        rows = session.exec(select(Artifact).where(Artifact.id != stored)).all()
        assert all(r.run_id in (None, meta_run) and r.experiment_id is None for r in rows)
    assert_logged_and_counted(
        lineage_client, log_events, hydrated={by_meta, by_workflow, half}, unresolved=nothing
    )


def assert_logged_and_counted(
    client: TestClient, log_events: list[dict[str, Any]], *, hydrated: set[int], unresolved: int
) -> None:
    """Each resolution is one log event named for its outcome, and counted in /metrics."""
    logged = {e["artifact_id"] for e in log_events if e["event"] == "lineage.hydrated"}
    assert logged >= hydrated
    assert any(
        e["event"] == "lineage.unresolved" and e["artifact_id"] == unresolved for e in log_events
    )
    metrics = client.get("/metrics").text
    assert (
        'gateway_lineage_resolutions_total{source="metadata_run_id",status="HYDRATED"} 1.0'
        in metrics
    )
    assert "gateway_mlflow_request_seconds_count" in metrics


def test_rest_artifact_carries_the_same_lineage(
    lineage_client: TestClient, insert: Callable[..., int], mlflow: MlflowClient, experiment: str
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run = make_run(mlflow, experiment, workflow_id=wf)
    artifact_id = insert(workflow_id=wf)
    body = lineage_client.get(f"/api/artifacts/{artifact_id}").json()
    assert (body["run_id"], body["experiment_id"]) == (run, experiment)
    assert body["lineage"] == {
        "status": "HYDRATED",
        "source": "workflow_tag",
        "reason": None,
        "run_id": run,
        "experiment_id": experiment,
        "run_url": f"{UI}/#/experiments/{experiment}/runs/{run}",
        "experiment_url": f"{UI}/#/experiments/{experiment}",
    }


PAGE = f"{{ artifacts(first: 100) {{ edges {{ node {{ id runId experimentId {LINEAGE} }} }} }} }}"


def test_a_page_of_100_legacy_rows_costs_one_search_per_workflow_then_none(
    experiment: str,  # (before the app: its start-up experiment list holds it)
    mlflow: MlflowClient,
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow_proxy: RecordingProxy,
) -> None:
    workflows = [f"wf-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    runs = {wf: make_run(mlflow, experiment, workflow_id=wf) for wf in workflows}
    for i in range(100):
        insert(name=f"legacy {i}", workflow_id=workflows[i % 5])
    mlflow_proxy.reset()

    first = gql(lineage_client, PAGE)["artifacts"]["edges"]
    assert len(first) == 100
    assert [e["node"]["runId"] for e in first] == [runs[workflows[i % 5]] for i in range(100)], (
        first[0]["node"]["lineage"]
    )
    assert all(e["node"]["lineage"]["status"] == "HYDRATED" for e in first)
    searches = mlflow_proxy.bodies("/api/2.0/mlflow/runs/search")
    assert len(searches) == 5
    assert sorted(json.loads(b)["filter"] for b in searches) == sorted(
        f"tags.workflow_id = '{wf}'" for wf in workflows
    )
    assert len(mlflow_proxy.paths("/api/2.0/mlflow/experiments/search")) <= 1

    mlflow_proxy.reset()
    second = gql(lineage_client, PAGE)["artifacts"]["edges"]
    assert second == first
    assert mlflow_proxy.paths("/api/2.0/mlflow/") == []


def test_metadata_run_ids_are_looked_up_in_one_search(
    experiment: str,  # (before the app: its start-up experiment list holds it)
    mlflow: MlflowClient,
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow_proxy: RecordingProxy,
) -> None:
    run_ids = [make_run(mlflow, experiment) for _ in range(7)]
    for run_id in run_ids * 3:
        insert(meta={"mlflow_run_id": run_id})
    mlflow_proxy.reset()
    edges = gql(lineage_client, PAGE)["artifacts"]["edges"]
    assert [e["node"]["runId"] for e in edges] == run_ids * 3
    searches = mlflow_proxy.bodies("/api/2.0/mlflow/runs/search")
    assert len(searches) == 1
    assert "attributes.run_id IN" in json.loads(searches[0])["filter"]


def test_an_object_key_in_mlflows_layout_resolves_in_the_same_search_as_metadata_run_ids(
    experiment: str,  # (before the app: its start-up experiment list holds it)
    mlflow: MlflowClient,
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow_proxy: RecordingProxy,
) -> None:
    by_metadata, by_key, by_path = (make_run(mlflow, experiment) for _ in range(3))
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    latest = make_run(mlflow, experiment, workflow_id=wf)
    unknown = uuid.uuid4().hex  # in MLflow's layout, but no such run
    ids = [
        insert(meta={"mlflow_run_id": by_metadata}),
        insert(chart_data={"minio_url": f"s3://mlflow/{experiment}/{by_key}/artifacts/c.png"}),
        insert(path=f"/srv/mlruns/{experiment}/{by_path}/artifacts/chart.png"),
        insert(workflow_id=wf, chart_data={"minio_url": f"s3://m/1/{unknown}/artifacts/c.png"}),
    ]
    mlflow_proxy.reset()
    edges = gql(lineage_client, PAGE)["artifacts"]["edges"]
    got = {e["node"]["id"]: e["node"] for e in edges}
    assert [
        (got[i]["runId"], got[i]["experimentId"], got[i]["lineage"]["source"]) for i in ids
    ] == [
        (by_metadata, experiment, "METADATA_RUN_ID"),
        (by_key, experiment, "OBJECT_KEY"),
        (by_path, experiment, "OBJECT_KEY"),
        (latest, experiment, "WORKFLOW_TAG"),
    ]
    searches = [json.loads(b)["filter"] for b in mlflow_proxy.bodies("/api/2.0/mlflow/runs/search")]
    by_id = [f for f in searches if "attributes.run_id IN" in f]
    assert len(by_id) == 1  # every run id of the page, keys included, in one search
    assert all(run in by_id[0] for run in (by_metadata, by_key, by_path, unknown))
    assert len(searches) == 2  # and the workflow's, once the unknown key fell through


def _query_unavailable(client: TestClient, artifact_id: int) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    data = node(client, artifact_id)
    return data, time.monotonic() - started


def test_mlflow_down_degrades_lineage_only_and_recovers(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    experiment: str,
    mlflow_proxy: RecordingProxy,
    log_events: list[dict[str, Any]],
) -> None:
    # A cool-down long enough that a slow runner's next read still finds the circuit open
    # (with 0.5 s, a read that took 0.65 s on a loaded machine was the breaker's trial).
    cooldown_s = 3.0
    app = create_app(
        lineage_settings(settings, mlflow_proxy.url, mlflow_breaker_cooldown_s=cooldown_s)
    )
    with TestClient(app, raise_server_exceptions=False) as lineage_client:
        _degrades_and_recovers(
            lineage_client, insert, mlflow, experiment, mlflow_proxy, log_events, cooldown_s
        )


def _degrades_and_recovers(
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    experiment: str,
    mlflow_proxy: RecordingProxy,
    log_events: list[dict[str, Any]],
    cooldown_s: float,
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run = make_run(mlflow, experiment, workflow_id=wf)
    artifact_id = insert(name="while down", workflow_id=wf)
    mlflow_proxy.stop()  # connection refused from now on

    data, elapsed = _query_unavailable(lineage_client, artifact_id)
    assert data["name"] == "while down"
    assert data["runId"] is None
    assert data["lineage"]["status"] == "UNAVAILABLE"
    assert "MLflow" in data["lineage"]["reason"]
    assert elapsed < 2 * 3.0 + 2  # refused at once; never more than the batch budget

    for _ in range(5):  # keep failing until the breaker opens
        node(lineage_client, artifact_id)
    assert any(e["event"] == "lineage.circuit_open" for e in log_events)
    assert "circuit open" in node(lineage_client, artifact_id)["lineage"]["reason"]

    mlflow_proxy.start()
    # Once the cool-down has passed, the next read is the trial that closes the circuit.
    time.sleep(cooldown_s + 0.1)
    recovered = node(lineage_client, artifact_id)
    assert (recovered["runId"], recovered["lineage"]["status"]) == (run, "HYDRATED")


def test_a_port_that_never_answers_costs_one_budget_then_the_breaker(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
) -> None:
    listener = SilentListener()
    try:
        app = create_app(
            lineage_settings(
                settings,
                listener.url,
                mlflow_breaker_threshold=1,
                mlflow_breaker_cooldown_s=30,
                mlflow_timeout_s=1.0,
            )
        )
        artifact_id = insert(name="hung", workflow_id="wf-hung")
        with TestClient(app, raise_server_exceptions=False) as client:
            data, elapsed = _query_unavailable(client, artifact_id)
            assert data["name"] == "hung"
            assert data["lineage"]["status"] == "UNAVAILABLE"
            assert data["lineage"]["reason"] == "MLflow did not answer in time"
            assert elapsed < 2 * 1.0 + 2
            again, elapsed_again = _query_unavailable(client, artifact_id)
            assert "circuit open" in again["lineage"]["reason"]
            assert elapsed_again < 1.0  # short-circuited: no socket wait at all
    finally:
        listener.close()


def test_nothing_listening_gives_unavailable_not_an_error(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
) -> None:
    app = create_app(lineage_settings(settings, f"http://127.0.0.1:{free_port()}"))
    artifact_id = insert(workflow_id="wf-x", symbol="AAPL")
    with TestClient(app, raise_server_exceptions=False) as client:
        body = client.post(
            "/graphql",
            json={"query": "{ artifacts { edges { node { symbol runId lineage { status } } } } }"},
        ).json()
        assert "errors" not in body
        assert body["data"]["artifacts"]["edges"][0]["node"] == {
            "symbol": "AAPL",
            "runId": None,
            "lineage": {"status": "UNAVAILABLE"},
        }
        rest = client.get(f"/api/artifacts/{artifact_id}")
        assert rest.status_code == 200
        assert rest.json()["lineage"]["status"] == "UNAVAILABLE"


def test_the_experiment_list_is_read_at_start_up_so_a_cold_read_is_one_wave_of_searches(
    experiment: str,  # (created before the app starts: fixtures are set up in this order)
    mlflow: MlflowClient,
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow_proxy: RecordingProxy,
) -> None:
    assert experiments_listed(lineage_client), "the gateway never listed the experiments"
    workflows = [f"wf-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    runs = {wf: make_run(mlflow, experiment, workflow_id=wf) for wf in workflows}
    ids = [insert(workflow_id=wf) for wf in workflows]
    # The experiment existed before start-up: the list read then holds it.
    mlflow_proxy.reset()
    found = [node(lineage_client, i)["runId"] for i in ids]
    assert found == [runs[wf] for wf in workflows]
    assert mlflow_proxy.paths("/api/2.0/mlflow/") == ["/api/2.0/mlflow/runs/search"] * 3


def test_a_run_in_an_experiment_created_after_the_list_was_read_is_found(
    lineage_client: TestClient,
    insert: Callable[..., int],
    mlflow: MlflowClient,
    mlflow_proxy: RecordingProxy,
) -> None:
    assert experiments_listed(lineage_client), "the gateway never listed the experiments"
    newer = mlflow.create_experiment(f"newer-{uuid.uuid4().hex[:8]}")
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run = make_run(mlflow, newer, workflow_id=wf)
    artifact_id = insert(workflow_id=wf)
    data = node(lineage_client, artifact_id)
    assert (data["runId"], data["experimentId"]) == (run, newer)
    assert data["lineage"]["status"] == "HYDRATED"
    # Found by listing the experiments again and searching only the new one.
    assert len(mlflow_proxy.paths("/api/2.0/mlflow/experiments/search")) == 2


def test_lineage_decided_by_kept_lookups_is_answered_without_a_lookup(
    settings: Settings, mlflow_proxy: RecordingProxy, mlflow: MlflowClient, experiment: str
) -> None:
    workflow = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = make_run(mlflow, experiment, workflow_id=workflow)
    legacy = Artifact(id=1, name="legacy", artifact_type="llm", workflow_id=workflow)
    stored = Artifact(id=2, name="stored", artifact_type="llm", run_id="r", experiment_id="e")
    resolver = build_resolver(lineage_settings(settings, mlflow_proxy.url), Metrics())

    async def reads() -> tuple[Lineage, bool, list[Lineage], list[bool]]:
        try:
            cold = RequestLineage(resolver).of(legacy)
            cold_at_once = cold.done()
            cold_lineage = await cold
            mlflow_proxy.reset()
            # Stored ids, and a lookup the cold read kept: decided with nothing to wait for.
            later = [RequestLineage(resolver).of(row) for row in (stored, legacy)]
            at_once = [resolution.done() for resolution in later]
            return cold_lineage, cold_at_once, [await r for r in later], at_once
        finally:
            await resolver.backend.aclose()

    cold, cold_at_once, (stored_lineage, warm), at_once = asyncio.run(reads())
    assert cold.status is LineageStatus.HYDRATED
    assert cold.run_id == run_id
    assert cold_at_once is False  # the cold read had to ask MLflow
    assert at_once == [True, True]
    assert stored_lineage.status is LineageStatus.STORED
    assert warm == cold
    assert mlflow_proxy.paths("/api/2.0/mlflow/") == []
