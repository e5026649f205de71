"""Issue 30 sections 2 and 5 (pages): people get HTML pages, bounded in size, with working links."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator

import markupsafe
import pytest
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.faults import RecordingProxy, SilentListener
from tests.gateway.test_trust_cost import crowded_run
from tests.gateway.test_ui import page
from tests.support import lineage_settings


@pytest.mark.parametrize(
    "path",
    ["/ui/nope", "/ui/", "/ui/artifacts/1/nope", "/ui/runs/", "/ui/a%0Ab", "/ui/static/nope.css"],
)
def test_an_unknown_path_under_ui_is_an_html_404_page(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    if path == "/ui/":
        assert response.status_code in (307, 308)
        assert response.headers["location"].endswith("/ui/artifacts")
        return
    page(client, path, status=404)
    assert "Not Found" in response.text


def test_a_post_to_a_ui_page_is_an_html_405_page(client: TestClient) -> None:
    response = client.post("/ui/artifacts")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/html")
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    "workflow_id", ["wf\nsecond line", "wf\n", "..", ".", "quote\"'<b>", "日本/ワーク?x=1#f"]
)
def test_an_artifacts_workflow_link_opens_that_workflows_page(
    client: TestClient, insert: Callable[..., int], workflow_id: str
) -> None:
    artifact = insert(name="odd workflow", workflow_id=workflow_id)
    raw = page(client, f"/ui/artifacts/{artifact}") and client.get(f"/ui/artifacts/{artifact}")
    found = re.search(r'<dd id="workflow-id"><a href="([^"]*)"', raw.text)
    assert found is not None, raw.text
    link = html.unescape(found.group(1))
    workflow = page(client, link)
    assert workflow.ids["artifact-count"] == "1"
    assert str(markupsafe.escape(workflow_id)) in client.get(link).text


@pytest.fixture
def ui_client(settings: Settings, mlflow_proxy: RecordingProxy) -> Iterator[TestClient]:
    app = create_app(lineage_settings(settings, mlflow_proxy.url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.mlflow
def test_the_pages_of_a_run_with_thousands_of_params_are_small_and_paged(
    ui_client: TestClient, insert: Callable[..., int], mlflow: MlflowClient, experiment: str
) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = crowded_run(mlflow, experiment, entries=1200, workflow_id=wf)
    artifact = insert(name="legacy", workflow_id=wf)
    detail = ui_client.get(f"/ui/artifacts/{artifact}")
    assert detail.status_code == 200
    assert len(detail.content) < 100_000, len(detail.content)
    keys: list[str] = []
    url: str | None = f"/ui/runs/{run_id}"
    while url is not None:
        response = ui_client.get(url)
        assert response.status_code == 200
        assert len(response.content) < 150_000, len(response.content)
        shown = page(ui_client, url)
        keys += [row[0] for row in shown.rows if len(row) == 2 and row[0].startswith("k")]
        url = next((a["href"] for a in shown.links if a.get("id") == "params-next"), None)
    assert keys == [f"k{i:04d}" for i in range(1200)]


def test_a_page_past_its_deadline_is_an_html_503_page_and_the_api_a_problem(
    settings: Settings, insert: Callable[..., int]
) -> None:
    # MLflow accepts connections and never answers: a legacy row's lookup outlasts a short
    # request deadline, on a page for people and on the API alike.
    listener = SilentListener()
    try:
        app = create_app(
            lineage_settings(settings, listener.url, request_timeout_s=0.5, mlflow_timeout_s=5.0)
        )
        artifact_id = insert(name="legacy", workflow_id=f"wf-{uuid.uuid4().hex[:8]}")
        with TestClient(app) as client:
            ui = client.get(f"/ui/artifacts/{artifact_id}")
            api = client.get(f"/api/artifacts/{artifact_id}")
    finally:
        listener.close()
    assert ui.status_code == 503
    assert ui.headers["content-type"].startswith("text/html")
    assert ui.headers["retry-after"] == "1"
    assert "took longer than 0.5 s" in ui.text
    assert api.status_code == 503
    assert api.headers["content-type"] == "application/problem+json"
    assert api.headers["retry-after"] == "1"
