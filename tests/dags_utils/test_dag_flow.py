"""A DAG-like flow against a real MLflow server: capture on store, hydrate on read, backfill."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow as mlflow_fluent
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from chartkit import SnapshotError, random_walk_bars
from dags_utils import (
    backfill_workflow_lineage,
    log_workflow_to_mlflow,
    mlflow_run_context,
    store_chart_artifact,
    store_llm_artifact,
    store_signal_artifact,
)
from gateway.app import create_app
from gateway.models import Artifact
from gateway.settings import Settings
from tests.support import with_overrides

BARS = random_walk_bars(60, seed=2)


@pytest.fixture(autouse=True)
def _no_fluent_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield
    while mlflow_fluent.active_run() is not None:
        mlflow_fluent.end_run()


def row(engine: Engine, artifact_id: int) -> Artifact:
    with Session(engine) as session:
        found = session.get(Artifact, artifact_id)
        assert found is not None
        return found


def store_three_in_a_run(
    engine: Engine, uri: str, wf: str, experiment: str
) -> tuple[tuple[int, int, int], Any]:
    """A DAG run's tasks: a chart, an LLM analysis and a signal stored inside its MLflow run."""
    with mlflow_run_context(
        workflow_id=wf,
        dag_id="market_analysis",
        dag_run_id="manual__1",
        symbol="AAPL",
        experiment_name=experiment,
        tracking_uri=uri,
    ) as run:
        chart = store_chart_artifact(
            engine,
            name="AAPL chart",
            symbol="AAPL",
            workflow_id=wf,
            minio_url="s3://charts/AAPL/x.png",
            market_data_snapshot=BARS,
        )
        llm = store_llm_artifact(
            engine,
            name="AAPL take",
            symbol="AAPL",
            workflow_id=wf,
            text="Bullish above the 50-day.",
            model="gpt-4o-mini",
        )
        signal = store_signal_artifact(
            engine,
            name="AAPL signal",
            symbol="AAPL",
            workflow_id=wf,
            signal="BUY",
            confidence=0.8,
            price=101.5,
        )
    return (chart, llm, signal), run


def test_dag_flow_captures_hydrates_and_backfills(
    engine: Engine,
    settings: Settings,
    mlflow_server: Any,
    log_events: list[dict[str, Any]],
) -> None:
    uri = mlflow_server.url
    wf = f"market_analysis__{uuid.uuid4().hex[:8]}"
    experiment = f"dag-flow-{uuid.uuid4().hex[:6]}"
    (chart, llm, signal), run = store_three_in_a_run(engine, uri, wf, experiment)
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    for artifact_id in (chart, llm, signal):
        stored = row(engine, artifact_id)
        assert (stored.run_id, stored.experiment_id) == (run_id, experiment_id)
    assert row(engine, chart).meta["market_data_snapshot"] == BARS
    assert row(engine, signal).meta == {"signal": "BUY", "confidence": 0.8, "price": 101.5}
    stored_events = [e for e in log_events if e["event"] == "artifact.stored"]
    assert {e["lineage_source"] for e in stored_events} == {"active_run"}
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert (tags["workflow_id"], tags["dag_id"], tags["symbol"]) == (wf, "market_analysis", "AAPL")

    # A later task of the same workflow stores a row outside any run (the legacy path) ...
    legacy = store_llm_artifact(
        engine, name="late", symbol="AAPL", workflow_id=wf, text="late", model="m"
    )
    assert row(engine, legacy).run_id is None

    # ... log_workflow_to_mlflow finds the workflow's run and returns its id ...
    assert (
        log_workflow_to_mlflow(
            workflow_id=wf,
            dag_id="market_analysis",
            symbol="AAPL",
            metrics={"bars": 60},
            tracking_uri=uri,
            experiment_name=experiment,
        )
        == run_id
    )
    assert MlflowClient(uri).get_run(run_id).data.metrics["bars"] == 60

    # ... the gateway hydrates the legacy row on read, without writing ...
    # (kept answers off: the read after the backfill must not be the answer kept before it)
    app = create_app(with_overrides(settings, mlflow_tracking_uri=uri, answer_cache_s=0))
    query = {"query": "{ artifact(id: %d) { runId lineage { status source } } }" % legacy}
    with TestClient(app) as client:
        data = client.post("/graphql", json=query).json()["data"]["artifact"]
        assert data == {
            "runId": run_id,
            "lineage": {"status": "HYDRATED", "source": "WORKFLOW_TAG"},
        }
        assert row(engine, legacy).run_id is None

        # ... and backfill writes it, once.
        written = [
            backfill_workflow_lineage(
                engine=engine, workflow_id=wf, run_id=run_id, tracking_uri=uri
            ),
            backfill_workflow_lineage(
                engine=engine, workflow_id=wf, run_id=run_id, experiment_id=experiment_id
            ),
        ]
        assert written == [1, 0]
        assert (row(engine, legacy).run_id, row(engine, legacy).experiment_id) == (
            run_id,
            experiment_id,
        )
        data = client.post("/graphql", json=query).json()["data"]["artifact"]
        assert data["lineage"] == {"status": "STORED", "source": "ROW"}


def test_lineage_precedence_explicit_then_env(
    engine: Engine,
    mlflow_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    explicit = store_llm_artifact(
        engine,
        name="x",
        symbol=None,
        workflow_id="wf",
        text="t",
        model="m",
        run_id="run-explicit",
        experiment_id="9",
    )
    assert (row(engine, explicit).run_id, row(engine, explicit).experiment_id) == (
        "run-explicit",
        "9",
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", "run-from-env")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "4")
    from_env = store_signal_artifact(engine, name="s", symbol=None, workflow_id="wf", signal="HOLD")
    assert (row(engine, from_env).run_id, row(engine, from_env).experiment_id) == (
        "run-from-env",
        "4",
    )
    monkeypatch.delenv("MLFLOW_RUN_ID")
    none = store_signal_artifact(engine, name="s", symbol=None, workflow_id="wf", signal="HOLD")
    assert row(engine, none).run_id is None


def test_backfill_never_overwrites_and_touches_only_its_workflow(engine: Engine) -> None:
    linked = store_llm_artifact(
        engine,
        name="a",
        symbol=None,
        workflow_id="wf-a",
        text="t",
        model="m",
        run_id="old",
        experiment_id="1",
    )
    empty = store_llm_artifact(
        engine, name="b", symbol=None, workflow_id="wf-a", text="t", model="m"
    )
    other = store_llm_artifact(
        engine, name="c", symbol=None, workflow_id="wf-b", text="t", model="m"
    )
    assert (
        backfill_workflow_lineage(
            engine=engine, workflow_id="wf-a", run_id="new", experiment_id="2"
        )
        == 1
    )
    assert (row(engine, linked).run_id, row(engine, empty).run_id, row(engine, other).run_id) == (
        "old",
        "new",
        None,
    )


def test_a_chart_whose_snapshot_cannot_be_drawn_is_not_stored(engine: Engine) -> None:
    with pytest.raises(SnapshotError):
        store_chart_artifact(
            engine,
            name="bad",
            symbol="X",
            workflow_id="wf",
            minio_url="s3://charts/x.png",
            market_data_snapshot=[{"t": 1}],
        )
    with Session(engine) as session:
        assert session.get(Artifact, 1) is None


def test_dags_utils_imports_neither_airflow_nor_the_web_app() -> None:
    script = (
        "import sys, dags_utils; bad = [m for m in ('airflow', 'gateway.app', 'starlette',"
        " 'strawberry', 'gateway.gql') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def _row_count(engine: Engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Artifact)).all())


@pytest.mark.parametrize(
    ("store", "kwargs", "path"),
    [
        (
            store_chart_artifact,
            {
                "minio_url": "s3://charts/x.png",
                "market_data_snapshot": [{**BARS[0], "vwap": float("nan")}, *BARS[1:]],
            },
            "metadata.market_data_snapshot[0].vwap is nan",
        ),
        (
            store_chart_artifact,
            {
                "minio_url": "s3://charts/x.png",
                "market_data_snapshot": BARS,
                "chart_data": {"w": float("inf")},
            },
            "chart_data.w is inf",
        ),
        (
            store_signal_artifact,
            {"signal": "BUY", "confidence": float("nan")},
            "metadata.confidence is nan",
        ),
        (
            store_llm_artifact,
            {"text": "gap \ud800", "model": "m"},
            "metadata.text holds a lone UTF-16 surrogate",
        ),
        (
            store_llm_artifact,
            {"text": "t", "model": "m", "metadata": {"scores": [1.0, float("-inf")]}},
            "metadata.scores[1] is -inf",
        ),
    ],
)
def test_values_that_are_not_strict_json_are_refused_naming_the_key_path(
    engine: Engine, store: Any, kwargs: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(path)):
        store(
            engine,
            name="odd",
            symbol="X",
            workflow_id="wf",
            run_id="r" * 32,
            experiment_id="1",
            **kwargs,
        )
    assert _row_count(engine) == 0
