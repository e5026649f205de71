"""`gateway demo-data`: realistic, idempotent, with artifact 24 as the legacy chart."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from chartkit.sample import random_walk_bars
from gateway.app import create_app
from gateway.demo import DEMO_EXPERIMENT, seed_demo_data
from gateway.models import Artifact
from gateway.rows import effective_workflow_id, metadata_run_id
from gateway.settings import Settings


def test_demo_data_is_realistic_and_idempotent(engine: Engine, tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert seed_demo_data(engine=engine, tracking_uri=tracking_uri) == 36
    assert seed_demo_data(engine=engine, tracking_uri=tracking_uri) == 0

    with Session(engine) as session:
        rows = list(session.exec(select(Artifact).order_by(Artifact.id)).all())  # type: ignore[arg-type]
    assert len(rows) == 36
    assert {r.symbol for r in rows} == {"AAPL", "MSFT", "NVDA"}
    assert len({effective_workflow_id(r) for r in rows} - {None}) == 5
    assert {r.artifact_type for r in rows} == {"chart", "llm", "signal"}

    stored = [r for r in rows if r.run_id and r.experiment_id]
    legacy = [r for r in rows if r.run_id is None and r.experiment_id is None]
    assert 9 <= len(stored) <= 15
    assert len(stored) + len(legacy) == 36
    assert any(metadata_run_id(r) for r in legacy)
    assert any(effective_workflow_id(r) and not metadata_run_id(r) for r in legacy)
    assert any(not effective_workflow_id(r) and not metadata_run_id(r) for r in legacy)

    for chart in (r for r in rows if r.artifact_type == "chart"):
        bars = chart.meta["market_data_snapshot"]
        assert 200 <= len(bars) <= 500
        assert all(b["low"] <= min(b["open"], b["close"]) for b in bars)
        assert all(b["high"] >= max(b["open"], b["close"]) for b in bars)
        assert chart.chart_data["minio_url"].startswith("s3://charts/")

    a24 = rows[23]
    assert a24.id == 24
    assert a24.artifact_type == "chart"
    assert a24.run_id is None
    assert a24.experiment_id is None

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(DEMO_EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    run_ids = {run.info.run_id for run in runs}
    assert metadata_run_id(a24) in run_ids
    assert {r.run_id for r in stored} <= run_ids
    tagged = {run.data.tags["workflow_id"] for run in runs}
    assert tagged <= {effective_workflow_id(r) for r in rows}


def test_random_walk_bars_are_reproducible() -> None:
    assert random_walk_bars(50, seed=3) == random_walk_bars(50, seed=3)
    assert random_walk_bars(50, seed=3) != random_walk_bars(50, seed=4)


def test_artifact_24_hydrates_from_the_local_mlflow_store(
    engine: Engine, settings: Settings
) -> None:
    seed_demo_data(engine=engine, tracking_uri=settings.mlflow_tracking_uri)
    query = {
        "query": "{ artifact(id: 24) { id name runId experimentId imageUrl "
        "lineage { status source } } }"
    }
    with TestClient(create_app(settings)) as client:
        data = client.post("/graphql", json=query).json()["data"]["artifact"]
    assert data["id"] == 24
    assert data["lineage"] == {"status": "HYDRATED", "source": "METADATA_RUN_ID"}
    assert data["runId"] is not None
    assert data["imageUrl"] == "/api/artifacts/24/image"
    with Session(engine) as session:
        row = session.get(Artifact, 24)
        assert row is not None
        assert row.run_id is None  # the read did not write
