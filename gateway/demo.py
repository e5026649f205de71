"""`gateway demo-data`: a realistic, idempotent data set on the embedded defaults."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from chartkit.sample import random_walk_bars
from gateway.db import init_db
from gateway.models import Artifact, ArtifactType

DEMO_EXPERIMENT = "trading-analytics-demo"
DEMO_BUCKET = "charts"
SYMBOLS = ("AAPL", "MSFT", "NVDA")
BASE_TIME = datetime(2026, 11, 16, 21, 0, tzinfo=UTC)
# The legacy chart whose MinIO object is gone: the case that started this project.
MISSING_OBJECT_ARTIFACT_ID = 24

log = structlog.get_logger("gateway.demo")


@dataclass(frozen=True)
class DemoWorkflow:
    """One DAG run of the demo: its ids and the symbol it analysed."""

    workflow_id: str
    dag_id: str
    dag_run_id: str
    symbol: str
    started: datetime


def demo_workflows() -> list[DemoWorkflow]:
    """Five workflows over three symbols on consecutive trading days."""
    workflows = []
    for i in range(5):
        started = BASE_TIME + timedelta(days=i)
        symbol = SYMBOLS[i % len(SYMBOLS)]
        dag_run_id = f"scheduled__{started.isoformat()}"
        workflows.append(
            DemoWorkflow(
                workflow_id=f"market_analysis_{symbol.lower()}_{started:%Y%m%d}",
                dag_id="market_analysis",
                dag_run_id=dag_run_id,
                symbol=symbol,
                started=started,
            )
        )
    return workflows


def ensure_mlflow_runs(
    tracking_uri: str, workflows: list[DemoWorkflow]
) -> dict[str, tuple[str, str]]:
    """Create (once) the demo experiment and one run per workflow tagged `workflow_id`.

    Returns workflow id -> (run id, experiment id). The last workflow gets no run, so its
    legacy rows stay unresolved, as happens in production.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(DEMO_EXPERIMENT)
    if experiment is None:
        artifact_root = Path("var/mlartifacts").resolve()
        artifact_root.mkdir(parents=True, exist_ok=True)
        experiment_id = client.create_experiment(
            DEMO_EXPERIMENT, artifact_location=artifact_root.as_uri()
        )
    else:
        experiment_id = experiment.experiment_id
    runs: dict[str, tuple[str, str]] = {}
    for wf in workflows[:-1]:
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.workflow_id = '{wf.workflow_id}'", max_results=1
        )
        if found:
            runs[wf.workflow_id] = (found[0].info.run_id, experiment_id)
            continue
        start_ms = int(wf.started.timestamp() * 1000)
        run = client.create_run(
            experiment_id,
            start_time=start_ms,
            run_name=f"{wf.dag_id}-{wf.symbol}-{wf.started:%Y%m%d}",
            tags={
                "workflow_id": wf.workflow_id,
                "dag_id": wf.dag_id,
                "dag_run_id": wf.dag_run_id,
                "symbol": wf.symbol,
            },
        )
        client.log_param(run.info.run_id, "symbol", wf.symbol)
        client.log_metric(run.info.run_id, "bars", 300)
        client.set_terminated(run.info.run_id, "FINISHED", end_time=start_ms + 95_000)
        runs[wf.workflow_id] = (run.info.run_id, experiment_id)
    return runs


def _lineage_plan(index: int) -> str:
    """Which lineage a demo row carries: stored, metadata run id, workflow only, or nothing."""
    if index + 1 == MISSING_OBJECT_ARTIFACT_ID:
        return "metadata_run_id"
    return ("stored", "metadata_run_id", "workflow_only", "stored", "workflow_only", "none")[
        index % 6
    ]


def build_demo_rows(
    workflows: list[DemoWorkflow], runs: dict[str, tuple[str, str]]
) -> list[Artifact]:
    """36 artifacts (ids 1..36 on an empty table), deterministic for a given set of runs."""
    rng = random.Random(20261116)
    kinds = (ArtifactType.CHART, ArtifactType.LLM, ArtifactType.CHART, ArtifactType.SIGNAL)
    rows: list[Artifact] = []
    for index in range(36):
        wf = workflows[index % len(workflows)]
        kind = kinds[index % len(kinds)]
        if index + 1 == MISSING_OBJECT_ARTIFACT_ID:
            kind = ArtifactType.CHART
            wf = workflows[1]
        plan = _lineage_plan(index)
        run = runs.get(wf.workflow_id)
        created = wf.started + timedelta(minutes=3 + index)
        meta: dict[str, Any] = {"dag_id": wf.dag_id, "dag_run_id": wf.dag_run_id}
        row = Artifact(
            name=f"{wf.symbol} {kind.value} #{index + 1}",
            artifact_type=kind.value,
            symbol=wf.symbol,
            workflow_id=wf.workflow_id,
            created_at=created,
        )
        if plan == "stored" and run is not None:
            row.run_id, row.experiment_id = run
        elif plan == "metadata_run_id" and run is not None:
            meta["mlflow_run_id"] = run[0]
        elif plan == "workflow_only" and index % 4 == 0:
            # Some DAG versions put the workflow id in metadata instead of the column.
            meta["workflow_id"], row.workflow_id = wf.workflow_id, None
        elif plan == "none":
            row.workflow_id = None
            meta = {"source": "legacy-import"}
        if kind == ArtifactType.CHART:
            bars = random_walk_bars(
                rng.randint(200, 500),
                seed=index,
                price=rng.uniform(80, 450),
                start=wf.started - timedelta(days=500),
            )
            key = f"{wf.symbol}/{wf.workflow_id}/chart_{index + 1}.png"
            meta["market_data_snapshot"] = bars
            meta["interval"] = "1d"
            row.chart_data = {"minio_url": f"s3://{DEMO_BUCKET}/{key}", "interval": "1d"}
            row.path = f"/opt/airflow/charts/{wf.symbol}_{index + 1}.png"
        elif kind == ArtifactType.LLM:
            meta["model"] = "gpt-4o-mini"
            meta["text"] = (
                f"{wf.symbol} closed near the upper Bollinger band with RSI at "
                f"{rng.randint(55, 72)}; momentum remains positive but stretched. "
                "Watch the 20-day SMA as first support."
            )
        else:
            meta["signal"] = rng.choice(["BUY", "HOLD", "SELL"])
            meta["confidence"] = round(rng.uniform(0.5, 0.95), 2)
            meta["price"] = round(rng.uniform(80, 450), 2)
        row.meta = meta
        rows.append(row)
    return rows


def seed_demo_data(*, engine: Engine, tracking_uri: str) -> int:
    """Seed MLflow runs and artifacts; a second call changes nothing. Returns rows inserted."""
    init_db(engine)
    workflows = demo_workflows()
    runs = ensure_mlflow_runs(tracking_uri, workflows)
    with Session(engine) as session:
        existing = session.exec(select(func.count()).select_from(Artifact)).one()
        if existing:
            log.info("demo.already_seeded", artifacts=existing)
            return 0
        rows = build_demo_rows(workflows, runs)
        session.add_all(rows)
        session.commit()
    log.info("demo.seeded", artifacts=len(rows), mlflow_runs=len(runs))
    return len(rows)
