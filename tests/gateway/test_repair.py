"""repairLineage and `gateway repair-lineage`: admin only, compare-and-set, idempotent."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.cli import main as cli_main
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.repair import repair_lineage
from gateway.services import build_resolver
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.support import with_overrides

TOKEN = "test-admin-token-0123456789abcdef"
REPAIR = """mutation($dry: Boolean!, $ids: [Int!], $wf: String) {
  repairLineage(dryRun: $dry, ids: $ids, workflowId: $wf) {
    dryRun scanned repaired alreadyLinked unresolved unavailable
    items { artifactId runId experimentId outcome reason }
  }
}"""


@pytest.fixture
def repair_settings(settings: Settings, mlflow_proxy: RecordingProxy) -> Settings:
    return with_overrides(
        settings,
        mlflow_tracking_uri=mlflow_proxy.url,
        mlflow_timeout_s=3.0,
        admin_token=SecretStr(TOKEN),
    )


@pytest.fixture
def admin(repair_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(repair_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def dataset(insert: Callable[..., int], mlflow_server: Any) -> dict[str, Any]:
    """Resolvable rows (workflow tag, metadata run id), unresolvable ones, a linked one."""
    mlflow = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = str(mlflow.create_experiment(f"repair-{uuid.uuid4().hex[:8]}"))
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    wf_run = mlflow.create_run(experiment, tags={"workflow_id": wf}).info.run_id
    meta_run = mlflow.create_run(experiment).info.run_id
    rows = {
        "by_workflow": [insert(workflow_id=wf) for _ in range(3)],
        "by_meta": [insert(meta={"mlflow_run_id": meta_run}) for _ in range(2)],
        "unresolved": [insert(workflow_id=f"nobody-{uuid.uuid4().hex[:6]}"), insert()],
        "linked": [insert(workflow_id=wf, run_id="keep-run", experiment_id="keep-exp")],
    }
    return {
        "rows": rows,
        "wf": wf,
        "wf_run": wf_run,
        "meta_run": meta_run,
        "experiment": experiment,
    }


def lineage_in_db(engine: Engine) -> dict[int, tuple[str | None, str | None]]:
    with Session(engine) as session:
        return {r.id: (r.run_id, r.experiment_id) for r in session.exec(select(Artifact))}  # type: ignore[misc]


def call(client: TestClient, token: str | None = TOKEN, **variables: Any) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    variables.setdefault("dry", False)
    response = client.post(
        "/graphql", json={"query": REPAIR, "variables": variables}, headers=headers
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_dry_run_reports_and_writes_nothing(
    admin: TestClient, dataset: dict[str, Any], engine: Engine
) -> None:
    before = lineage_in_db(engine)
    report = call(admin, dry=True)["data"]["repairLineage"]
    assert lineage_in_db(engine) == before
    assert report["dryRun"] is True
    assert (report["scanned"], report["repaired"], report["unresolved"]) == (7, 5, 2)
    outcomes = {i["artifactId"]: i["outcome"] for i in report["items"]}
    assert {outcomes[i] for i in dataset["rows"]["by_workflow"]} == {"WOULD_REPAIR"}


def test_repair_writes_exactly_the_resolvable_rows_then_nothing(
    admin: TestClient,
    dataset: dict[str, Any],
    engine: Engine,
    log_events: list[dict[str, Any]],
) -> None:
    report = call(admin)["data"]["repairLineage"]
    assert (report["scanned"], report["repaired"], report["unresolved"], report["unavailable"]) == (
        7,
        5,
        2,
        0,
    )
    db = lineage_in_db(engine)
    rows, exp = dataset["rows"], dataset["experiment"]
    assert all(db[i] == (dataset["wf_run"], exp) for i in rows["by_workflow"])
    assert all(db[i] == (dataset["meta_run"], exp) for i in rows["by_meta"])
    assert all(db[i] == (None, None) for i in rows["unresolved"])
    assert db[rows["linked"][0]] == ("keep-run", "keep-exp")
    assert len([e for e in log_events if e["event"] == "lineage.repaired"]) == 5

    again = call(admin)["data"]["repairLineage"]
    assert (again["scanned"], again["repaired"]) == (2, 0)
    assert lineage_in_db(engine) == db
    metrics = admin.get("/metrics").text
    assert 'gateway_lineage_repairs_total{outcome="REPAIRED"} 5.0' in metrics
    assert "gateway_artifacts_missing_lineage 2.0" in metrics


def test_repair_writes_the_run_an_object_key_names(
    admin: TestClient, insert: Callable[..., int], mlflow_server: Any, engine: Engine
) -> None:
    mlflow = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = str(mlflow.create_experiment(f"repair-key-{uuid.uuid4().hex[:8]}"))
    run = mlflow.create_run(experiment).info.run_id
    keyed = insert(chart_data={"minio_url": f"s3://mlflow/{experiment}/{run}/artifacts/c.png"})
    unknown = insert(path=f"mlruns/{experiment}/{uuid.uuid4().hex}/artifacts/c.png")
    report = call(admin)["data"]["repairLineage"]
    assert (report["repaired"], report["unresolved"]) == (1, 1)
    db = lineage_in_db(engine)
    assert db[keyed] == (run, experiment)
    assert db[unknown] == (None, None)


def test_named_ids_and_workflow_filter(
    admin: TestClient, dataset: dict[str, Any], engine: Engine
) -> None:
    rows = dataset["rows"]
    report = call(admin, ids=[rows["by_meta"][0], rows["linked"][0]])["data"]["repairLineage"]
    outcomes = {i["artifactId"]: i["outcome"] for i in report["items"]}
    assert outcomes == {rows["by_meta"][0]: "REPAIRED", rows["linked"][0]: "ALREADY_LINKED"}
    assert lineage_in_db(engine)[rows["by_meta"][1]] == (None, None)

    by_wf = call(admin, wf=dataset["wf"])["data"]["repairLineage"]
    assert sorted(i["artifactId"] for i in by_wf["items"]) == rows["by_workflow"]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "admin token required"),
        ("wrong-token", "invalid admin token"),
        ("", "admin token required"),
    ],
)
def test_missing_or_wrong_token_is_refused_with_no_writes(
    admin: TestClient,
    dataset: dict[str, Any],
    engine: Engine,
    token: str | None,
    message: str,
) -> None:
    before = lineage_in_db(engine)
    body = call(admin, token=token)
    assert body["data"] is None
    assert message in body["errors"][0]["message"]
    assert lineage_in_db(engine) == before


def test_repair_is_refused_when_no_token_is_configured(
    repair_settings: Settings, engine: Engine, dataset: dict[str, Any]
) -> None:
    before = lineage_in_db(engine)
    app = create_app(with_overrides(repair_settings, admin_token=None))
    with TestClient(app) as client:
        body = call(client, token=TOKEN)
    assert "GATEWAY_ADMIN_TOKEN is not configured" in body["errors"][0]["message"]
    assert lineage_in_db(engine) == before


def test_bad_arguments_are_graphql_errors(admin: TestClient, dataset: dict[str, Any]) -> None:
    body = call(admin, ids=[-3])
    assert body["errors"][0]["message"] == "ids must be a positive integer"


def test_two_concurrent_repairs_write_each_row_once(
    repair_settings: Settings, engine: Engine, dataset: dict[str, Any]
) -> None:
    async def both() -> list[Any]:
        resolvers = [build_resolver(repair_settings, Metrics()) for _ in range(2)]
        try:
            return list(
                await asyncio.gather(
                    *(repair_lineage(engine=engine, resolver=r, batch_size=2) for r in resolvers)
                )
            )
        finally:
            for r in resolvers:
                await r.backend.aclose()

    first, second = asyncio.run(both())
    written = [
        i.artifact_id
        for report in (first, second)
        for i in report.items
        if i.outcome.value == "REPAIRED"
    ]
    rows = dataset["rows"]
    assert sorted(written) == sorted(rows["by_workflow"] + rows["by_meta"])
    assert first.repaired + second.repaired == 5


def test_cli_repair_lineage_prints_a_summary_and_exits_0(
    repair_settings: Settings,
    engine: Engine,
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", repair_settings.database_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", repair_settings.mlflow_tracking_uri)
    before = lineage_in_db(engine)
    assert cli_main(["repair-lineage", "--dry-run", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "lineage repair (dry run)" in out
    assert "would repair" in out
    assert lineage_in_db(engine) == before
    assert cli_main(["repair-lineage", "--workflow-id", dataset["wf"]]) == 0
    assert "repaired" in capsys.readouterr().out
    assert all(
        lineage_in_db(engine)[i][0] == dataset["wf_run"] for i in dataset["rows"]["by_workflow"]
    )


def test_cli_exits_1_when_mlflow_is_unavailable(
    repair_settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.servers import free_port

    insert(workflow_id="wf-any")
    monkeypatch.setenv("DATABASE_URL", repair_settings.database_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli_main(["repair-lineage"]) == 1
    assert "MLflow was unavailable" in capsys.readouterr().out


def test_repairs_racing_reads_and_each_other_lose_nothing(
    repair_settings: Settings, engine: Engine, dataset: dict[str, Any]
) -> None:
    """Two repairs and a stream of reads at once: every row written once, no read fails."""
    app = create_app(repair_settings)
    failures: list[str] = []
    reports: list[Any] = []
    stop = threading.Event()

    def reader(client: TestClient) -> None:
        while not stop.is_set():
            response = client.post(
                "/graphql",
                json={"query": "{ artifacts { edges { node { id runId lineage { status } } } } }"},
            )
            if response.status_code != 200 or "errors" in response.json():
                failures.append(response.text[:300])

    def repairer() -> None:
        async def run() -> Any:
            resolver = build_resolver(repair_settings, Metrics())
            try:
                return await repair_lineage(engine=engine, resolver=resolver, batch_size=1)
            finally:
                await resolver.backend.aclose()

        reports.append(asyncio.run(run()))

    with TestClient(app) as client:
        readers = [threading.Thread(target=reader, args=(client,)) for _ in range(3)]
        repairers = [threading.Thread(target=repairer) for _ in range(2)]
        for thread in readers + repairers:
            thread.start()
        for thread in repairers:
            thread.join()
        stop.set()
        for thread in readers:
            thread.join()
    assert failures == []
    written = sorted(
        i.artifact_id for r in reports for i in r.items if i.outcome.value == "REPAIRED"
    )
    rows = dataset["rows"]
    assert written == sorted(rows["by_workflow"] + rows["by_meta"])
    db = lineage_in_db(engine)
    assert all(db[i] == (dataset["wf_run"], dataset["experiment"]) for i in rows["by_workflow"])
    assert db[rows["linked"][0]] == ("keep-run", "keep-exp")
