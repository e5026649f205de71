"""Issue 30 section 2: every list is priced by its real bound, MLflow-sized lists are paged, and
a run's artifacts are found with work bounded by the page, not by the table."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from graphql import parse
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.gql.cost import LIST_DEFAULT_FIRST, LIST_MAX_FIRST, operation_cost
from gateway.gql.runs import DEFAULT_ENTRIES_PAGE, DEFAULT_PAGE, MAX_ENTRIES_PAGE
from gateway.gql.types import MAX_PAGE
from gateway.mlflow_backend import WORKFLOW_RUNS_MAX
from gateway.models import Artifact
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.gateway.test_lineage import gql
from tests.gateway.test_run_graph import T0, logged_run
from tests.support import lineage_settings

RUN = "run(id: $id)"


def cost(query: str, **variables: Any) -> int:
    return operation_cost(parse(query), None, variables)


def refused(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    body = client.post("/graphql", json={"query": query, "variables": variables}).json()
    assert body["data"] is None, body
    (error,) = body["errors"]
    assert error["extensions"] == {"code": "QUERY_TOO_COSTLY"}
    return dict(error)


def test_what_a_workflows_runs_select_is_multiplied_by_the_200_runs_it_can_return() -> None:
    one = cost('{ workflow(id: "w") { runs { artifacts(first: 1) { edges { node { id } } } } } }')
    # workflow 2 + runs 5 + 200 runs x (a page of 1 row)
    assert one == 2 + 5 + 200 * 1
    assert cost('{ workflow(id: "w") { runs(first: 3) { id } } }') == 2 + 5


def test_params_metrics_and_tags_cost_one_per_entry_they_can_return() -> None:
    q = "query($id: String!) { %s { params { key value } } }" % RUN
    assert cost(q, id="r") == 1 + 100  # run 1 + up to 100 params (the default page)
    q = "query($id: String!) { %s { metrics(first: 500) { key } tags(first: 7) { key } } }" % RUN
    assert cost(q, id="r") == 1 + 500 + 7


def test_a_page_size_left_to_its_variables_default_is_priced_at_that_default() -> None:
    q = "query($id: String!, $n: Int! = 500) { %s { params(first: $n) { key } } }" % RUN
    assert cost(q, id="r") == 1 + 500
    assert cost(q, id="r", n=3) == 1 + 3  # a value sent wins over the default
    q = "query($n: Int = 100) { artifacts(first: $n) { edges { node { id } } } }"
    assert cost(q) == 100  # counted at most 100, the page's own bound


def test_the_cost_model_uses_the_bounds_the_resolvers_enforce() -> None:
    assert LIST_DEFAULT_FIRST["artifacts"] == DEFAULT_PAGE
    assert LIST_MAX_FIRST["artifacts"] == MAX_PAGE
    assert LIST_DEFAULT_FIRST["runs"] == LIST_MAX_FIRST["runs"] == WORKFLOW_RUNS_MAX
    for entries in ("params", "metrics", "tags"):
        assert LIST_DEFAULT_FIRST[entries] == DEFAULT_ENTRIES_PAGE
        assert LIST_MAX_FIRST[entries] == MAX_ENTRIES_PAGE


def test_fifteen_aliases_of_a_runs_params_are_refused_before_mlflow_is_asked(
    client: TestClient,
) -> None:
    aliases = " ".join(f"a{i}: {RUN} {{ params {{ key value }} }}" for i in range(15))
    error = refused(client, "query($id: String!) { %s }" % aliases, id="r" * 32)
    assert error["message"].startswith("query cost 1515 exceeds the budget of 1000")


def test_a_workflows_runs_with_their_params_are_refused(client: TestClient) -> None:
    error = refused(client, '{ workflow(id: "w") { runs { params { key value } } } }')
    assert error["message"].startswith("query cost 20007 exceeds")


@pytest.fixture
def mlflow_client(settings: Settings, mlflow_proxy: RecordingProxy) -> Iterator[TestClient]:
    app = create_app(lineage_settings(settings, mlflow_proxy.url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def crowded_run(mlflow: MlflowClient, experiment: str, *, entries: int, workflow_id: str) -> str:
    """A run with `entries` params, metrics and user tags (keys k0000...), logged in batches."""
    run_id = logged_run(mlflow, experiment, workflow_id=workflow_id, start_ms=T0 + 10_000)
    keys = [f"k{i:04d}" for i in range(entries)]
    for start in range(0, entries, 100):  # MLflow takes at most 100 params per batch
        chunk = keys[start : start + 100]
        mlflow.log_batch(
            run_id,
            params=[Param(k, "v" * 200) for k in chunk],
            metrics=[Metric(k, 1.0, T0, 0) for k in chunk],
            tags=[RunTag(k, "t") for k in chunk],
        )
    return run_id


PAGED = """query($id: String!, $p: String, $m: String, $t: String) { run(id: $id) {
    paramCount metricCount tagCount
    params(first: 100, after: $p) { key }
    metrics(first: 100, after: $m) { key }
    tags(first: 100, after: $t) { key } } }"""


@pytest.mark.mlflow
def test_a_runs_params_metrics_and_tags_are_paged_by_key_with_their_counts(
    mlflow_client: TestClient, mlflow: MlflowClient, experiment: str
) -> None:
    run_id = crowded_run(mlflow, experiment, entries=250, workflow_id=f"wf-{uuid.uuid4().hex}")
    seen: dict[str, list[str]] = {"params": [], "metrics": [], "tags": []}
    after: dict[str, str | None] = {"p": None, "m": None, "t": None}
    for _ in range(3):
        run = gql(mlflow_client, PAGED, id=run_id, **after)["run"]
        # 250 user tags plus the test's workflow_id, team and note
        assert (run["paramCount"], run["metricCount"], run["tagCount"]) == (250, 250, 253)
        for field, cursor in (("params", "p"), ("metrics", "m"), ("tags", "t")):
            keys = [entry["key"] for entry in run[field]]
            assert len(keys) <= 100
            seen[field] += keys
            after[cursor] = keys[-1] if keys else after[cursor]
    keys = [f"k{i:04d}" for i in range(250)]
    assert seen["params"] == keys
    assert seen["metrics"] == keys
    assert [k for k in seen["tags"] if k.startswith("k")] == keys


def legacy_rows(engine: Engine, workflow_id: str, count: int, **fields: Any) -> None:
    with Session(engine) as session:
        for i in range(count):
            session.add(
                Artifact(
                    name=f"legacy {i}", artifact_type="chart", workflow_id=workflow_id, **fields
                )
            )
        session.commit()


def artifact_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and "artifacts" in s]


RUN_PAGE = """query($id: String!, $after: String) { run(id: $id) {
    artifacts(first: 1, after: $after) {
        edges { node { id runId } } pageInfo { hasNextPage endCursor } } } }"""


@pytest.mark.mlflow
def test_a_page_of_an_older_runs_artifacts_reads_no_legacy_row_of_its_workflow(
    mlflow_client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    engine: Engine,
    statements: list[str],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    older = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0)
    newer = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0 + 5000)
    legacy_rows(engine, wf, 450)
    gql(mlflow_client, RUN_PAGE, id=newer)  # MLflow's answers are cached from here on
    statements.clear()
    page = gql(mlflow_client, RUN_PAGE, id=older)["run"]["artifacts"]
    assert page == {"edges": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}
    # Every legacy row of the workflow belongs to the newer run: none is a candidate here.
    assert len(artifact_reads(statements)) == 1
    statements.clear()
    page = gql(mlflow_client, RUN_PAGE, id=newer)["run"]["artifacts"]
    assert [e["node"]["runId"] for e in page["edges"]] == [newer]
    assert page["pageInfo"]["hasNextPage"] is True
    assert len(artifact_reads(statements)) == 1


@pytest.mark.mlflow
def test_a_page_of_a_runs_artifacts_scans_a_budget_and_ends_early_with_a_cursor(
    mlflow_client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    engine: Engine,
    insert: Callable[..., int],
    statements: list[str],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0)
    other = logged_run(mlflow, experiment, start_ms=T0)
    # Candidates of run_id (its workflow, its id in their path) that metadata gives to another.
    legacy_rows(engine, wf, 450, path=f"/mlruns/0/{run_id}/x.png", meta={"mlflow_run_id": other})
    mine = insert(name="mine", run_id=run_id, experiment_id=experiment)
    gql(mlflow_client, RUN_PAGE, id=run_id)
    ids, after, pages = [], None, 0
    while True:
        statements.clear()
        page = gql(mlflow_client, RUN_PAGE, id=run_id, after=after)["run"]["artifacts"]
        pages += 1
        # A page and one more row, then the rest of the page's budget: two reads at most.
        assert len(artifact_reads(statements)) <= 2
        ids += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        assert page["pageInfo"]["endCursor"] is not None
        after = page["pageInfo"]["endCursor"]
    assert ids == [mine]
    assert pages > 1


HEALTHY = """query($id: Int!) { artifact(id: $id) { lineage { status } } }"""


@pytest.mark.mlflow
def test_after_ten_hostile_requests_of_each_kind_lineage_resolves_and_healthz_answers(
    settings: Settings,
    mlflow_client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    engine: Engine,
    insert: Callable[..., int],
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    older = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0)
    crowded = crowded_run(mlflow, experiment, entries=600, workflow_id=wf)
    legacy_rows(engine, wf, 300)
    legacy = insert(name="legacy", workflow_id=wf)
    hostile = [
        (
            "query($id: String!) { %s }"
            % " ".join(f"a{i}: {RUN} {{ params {{ key value }} }}" for i in range(15)),
            {"id": crowded},
        ),
        ("query($w: String!) { workflow(id: $w) { runs { params { key value } } } }", {"w": wf}),
        (RUN_PAGE, {"id": older}),
    ]
    answers: list[tuple[int, str | None]] = []
    pages: list[tuple[int, int]] = []

    def attack() -> None:
        for _ in range(10):
            for query, variables in hostile:
                response = mlflow_client.post(
                    "/graphql", json={"query": query, "variables": variables}
                )
                errors = response.json().get("errors") or [{}]
                answers.append((response.status_code, errors[0].get("extensions", {}).get("code")))
            shown = mlflow_client.get(f"/ui/runs/{crowded}")
            pages.append((shown.status_code, len(shown.content)))

    thread = threading.Thread(target=attack)
    thread.start()
    health: list[int] = []
    waits: list[float] = []
    while thread.is_alive():
        started = time.perf_counter()
        health.append(mlflow_client.get("/healthz").status_code)
        waits.append(time.perf_counter() - started)
    thread.join()
    # The two MLflow-sized queries are refused by their price; the page of one row is served.
    assert {code for _, code in answers[0::3]} == {"QUERY_TOO_COSTLY"}
    assert {code for _, code in answers[1::3]} == {"QUERY_TOO_COSTLY"}
    assert set(answers[2::3]) == {(200, None)}
    assert all(status == 200 and size < 200_000 for status, size in pages), pages
    assert health
    assert set(health) == {200}
    # The loop was never held for as long as one MLflow call may take (the configured bound).
    assert max(waits) < lineage_settings(settings, "http://127.0.0.1:9").mlflow_timeout_s, max(
        waits
    )
    body = gql(mlflow_client, HEALTHY, id=legacy)
    assert body["artifact"]["lineage"]["status"] == "HYDRATED"
    run = gql(mlflow_client, "query($id: String!) { run(id: $id) { paramCount } }", id=crowded)
    assert run["run"]["paramCount"] == 600
