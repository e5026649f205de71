"""The run and workflow pages, and the artifact page's run panel, against a real MLflow server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.gateway.test_run_graph import T0, logged_run
from tests.gateway.test_ui import page
from tests.servers import free_port
from tests.support import UI, lineage_settings

pytestmark = pytest.mark.mlflow


@pytest.fixture
def ui_client(settings: Settings, mlflow_proxy: RecordingProxy) -> Iterator[TestClient]:
    app = create_app(lineage_settings(settings, mlflow_proxy.url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_the_artifact_page_shows_its_runs_name_status_params_and_metrics(
    ui_client: TestClient, insert: Callable[..., int], mlflow: MlflowClient, experiment: str
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = logged_run(
        mlflow,
        experiment,
        workflow_id=wf,
        start_ms=T0,
        params={"window": "<script>alert(1)</script>"},
        metrics={"sharpe": [(1.5, 2)]},
        name="train",
    )
    artifact = insert(name="legacy chart", workflow_id=wf)
    shown = page(ui_client, f"/ui/artifacts/{artifact}")
    assert (shown.ids["run-name"], shown.ids["run-status"]) == ("train", "FINISHED")
    assert shown.ids["run-start"] == "2026-11-02 09:30:00 UTC"
    assert shown.ids["run-end"] == "2026-11-02 09:31:00 UTC"
    assert mlflow.get_experiment(experiment).name in shown.ids["run-experiment"]
    assert ["window", "<script>alert(1)</script>"] in shown.rows  # text, escaped in the HTML
    assert ["sharpe", "1.5", "2"] in shown.rows
    links = {a.get("class"): a["href"] for a in shown.links if a.get("class")}
    assert links["run-mlflow-link"] == f"{UI}/#/experiments/{experiment}/runs/{run_id}"
    assert links["run-page-link"] == f"/ui/runs/{run_id}"
    assert links["workflow-page-link"] == f"/ui/workflows/{wf}"
    raw = ui_client.get(f"/ui/artifacts/{artifact}").text
    assert "<script>alert(1)</script>" not in raw


def test_the_run_page_lists_what_the_run_produced(
    ui_client: TestClient, insert: Callable[..., int], mlflow: MlflowClient, experiment: str
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0, name="nightly")
    produced = [insert(name=f"chart {i}", workflow_id=wf) for i in range(3)]
    insert(name="someone else's", workflow_id="wf-other")
    shown = page(ui_client, f"/ui/runs/{run_id}")
    assert shown.ids["run-name"] == "nightly"
    ids = [int(row[0]) for row in shown.rows if row and row[0].isdigit()]
    assert ids == produced
    assert page(ui_client, f"/ui/runs/{uuid.uuid4().hex}", status=404)
    assert page(ui_client, "/ui/runs/not%20an%20id", status=400)


def test_the_workflow_page_shows_completeness_runs_and_artifacts(
    ui_client: TestClient, insert: Callable[..., int], mlflow: MlflowClient, experiment: str
) -> None:
    wf = f"scheduled__2026-11-02T09:30:00+00:00/{uuid.uuid4().hex[:6]}"  # Airflow's shape, and a /
    runs = [logged_run(mlflow, experiment, workflow_id=wf, start_ms=T0 + i) for i in range(2)]
    insert(name="linked", workflow_id=wf, run_id=runs[0], experiment_id=experiment)
    for i in range(3):
        insert(name=f"legacy {i}", workflow_id=wf)
    shown = page(ui_client, f"/ui/workflows/{quote(wf, safe='')}")
    assert (shown.ids["artifact-count"], shown.ids["missing-lineage"]) == ("4", "3")
    assert shown.ids["completeness"] == "25.0%"
    run_links = [a["href"] for a in shown.links if a["href"].startswith("/ui/runs/")]
    assert run_links == [f"/ui/runs/{runs[1]}", f"/ui/runs/{runs[0]}"]
    assert page(ui_client, "/ui/workflows/wf-nobody", status=404)


def test_with_mlflow_down_the_pages_say_so_and_still_show_the_table(
    settings: Settings, insert: Callable[..., int]
) -> None:
    app = create_app(
        lineage_settings(settings, f"http://127.0.0.1:{free_port()}", mlflow_timeout_s=0.5)
    )
    artifact = insert(name="stored", run_id=uuid.uuid4().hex, experiment_id="1", workflow_id="wf-d")
    with TestClient(app, raise_server_exceptions=False) as client:
        detail = page(client, f"/ui/artifacts/{artifact}")
        workflow = page(client, "/ui/workflows/wf-d")
        run = client.get(f"/ui/runs/{uuid.uuid4().hex}")
    assert "MLflow" in detail.ids["run-problem"]
    assert "MLflow" in workflow.ids["runs-problem"]
    assert workflow.ids["artifact-count"] == "1"
    assert run.status_code == 503
    assert run.headers["retry-after"] == "1"
