"""The task functions of the example market-analysis DAG, importable without Airflow.

`dag.py` wires them with Airflow's TaskFlow API; `tests/dags_utils/test_example_dag.py` calls
them in the same order against a real MLflow server, an S3-protocol server and the database.
Each task opens (or resumes) the workflow's MLflow run with `mlflow_run_context`, so every row
it stores carries the run id and experiment id from the start (lineage `STORED`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from minio import Minio
from sqlalchemy.engine import Engine

from chartkit import ChartSpec, load_snapshot, random_walk_bars
from chartkit.indicators import rsi, sma
from dags_utils import (
    backfill_workflow_lineage,
    log_workflow_to_mlflow,
    mlflow_run_context,
    publish_chart,
    store_llm_artifact,
    store_signal_artifact,
)
from gateway.db import make_engine

DAG_ID = "market_analysis"
EXPERIMENT = "market_analysis"
CHART_SPEC = ChartSpec(width=1200, height=800)


@dataclass(frozen=True)
class Connections:
    """Where the tasks write; in Airflow these come from the worker's environment."""

    database_url: str
    tracking_uri: str
    minio_endpoint: str
    minio_access_key: str
    minio_secret_key: str
    bucket: str = "charts"
    minio_secure: bool = False
    minio_region: str = "us-east-1"

    @classmethod
    def from_env(cls) -> Connections:
        return cls(
            database_url=os.environ["DATABASE_URL"],
            tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
            minio_endpoint=os.environ["MINIO_ENDPOINT"],
            minio_access_key=os.environ["MINIO_ACCESS_KEY"],
            minio_secret_key=os.environ["MINIO_SECRET_KEY"],
            bucket=os.environ.get("CHARTS_BUCKET", "charts"),
            minio_secure=os.environ.get("MINIO_SECURE", "false").lower() == "true",
        )

    def minio(self) -> Minio:
        return Minio(
            self.minio_endpoint,
            access_key=self.minio_access_key,
            secret_key=self.minio_secret_key,
            secure=self.minio_secure,
            region=self.minio_region,
        )

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        engine = make_engine(self.database_url)
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def in_workflow_run(workflow_id: str, conn: Connections) -> Iterator[Engine]:
    """The workflow's MLflow run as the active run (rows stored inside record its ids), and an
    engine for the task's writes."""
    with (
        mlflow_run_context(
            workflow_id=workflow_id, experiment_name=EXPERIMENT, tracking_uri=conn.tracking_uri
        ),
        conn.engine() as engine,
    ):
        yield engine


def workflow_id_for(symbol: str, dag_run_id: str) -> str:
    """One workflow id per symbol per DAG run: the lineage join key."""
    return f"{DAG_ID}__{symbol.lower()}__{dag_run_id}"


def fetch_bars(
    symbol: str, *, end: datetime | None = None, bars: int = 250
) -> list[dict[str, Any]]:
    """Daily OHLCV bars up to `end`: a stand-in for the market-data API (seeded per symbol)."""
    end = end or datetime.now(UTC)
    start = (end - timedelta(days=bars)).replace(hour=0, minute=0, second=0, microsecond=0)
    seed = sum(map(ord, symbol))
    return random_walk_bars(bars, seed=seed, start=start, price=100 + seed % 300)


def open_run(*, symbol: str, workflow_id: str, dag_run_id: str, conn: Connections) -> str:
    """Create (or resume) the workflow's MLflow run; returns its run id."""
    with mlflow_run_context(
        workflow_id=workflow_id,
        dag_id=DAG_ID,
        dag_run_id=dag_run_id,
        symbol=symbol,
        experiment_name=EXPERIMENT,
        tracking_uri=conn.tracking_uri,
    ) as run:
        return str(run.info.run_id)


def publish(*, bars: list[dict[str, Any]], symbol: str, workflow_id: str, conn: Connections) -> int:
    """Render the chart with chartkit, upload it, store the row; returns the artifact id."""
    with in_workflow_run(workflow_id, conn) as engine:
        return publish_chart(
            engine=engine,
            minio_client=conn.minio(),
            bucket=conn.bucket,
            snapshot=bars,
            symbol=symbol,
            workflow_id=workflow_id,
            name=f"{symbol} daily",
            spec=CHART_SPEC,
        )


def indicators(bars: list[dict[str, Any]]) -> dict[str, float]:
    """Last close, 20-day SMA and 14-day RSI of the bars."""
    close = load_snapshot(bars)["close"]
    return {
        "last_close": round(float(close.iloc[-1]), 2),
        "sma_20": round(float(sma(close, 20).iloc[-1]), 2),
        "rsi_14": round(float(rsi(close, 14).iloc[-1]), 1),
    }


def analyse(*, bars: list[dict[str, Any]], symbol: str, workflow_id: str, conn: Connections) -> int:
    """Store the analysis text (an LLM call in production; a template here)."""
    values = indicators(bars)
    trend = "above" if values["last_close"] > values["sma_20"] else "below"
    text = (
        f"{symbol} closed at {values['last_close']:.2f}, {trend} its 20-day SMA "
        f"({values['sma_20']:.2f}); RSI(14) is {values['rsi_14']:.1f}."
    )
    with in_workflow_run(workflow_id, conn) as engine:
        return store_llm_artifact(
            engine,
            name=f"{symbol} analysis",
            symbol=symbol,
            workflow_id=workflow_id,
            text=text,
            model="template",
        )


def signal(*, bars: list[dict[str, Any]], symbol: str, workflow_id: str, conn: Connections) -> int:
    """Store a BUY/SELL/HOLD signal from RSI and the SMA."""
    values = indicators(bars)
    if values["rsi_14"] >= 70:
        side, confidence = "SELL", min(0.5 + (values["rsi_14"] - 70) / 60, 0.95)
    elif values["rsi_14"] <= 30:
        side, confidence = "BUY", min(0.5 + (30 - values["rsi_14"]) / 60, 0.95)
    else:
        side, confidence = "HOLD", 0.5
    with in_workflow_run(workflow_id, conn) as engine:
        return store_signal_artifact(
            engine,
            name=f"{symbol} signal",
            symbol=symbol,
            workflow_id=workflow_id,
            signal=side,
            confidence=round(confidence, 2),
            price=values["last_close"],
        )


def log_run(*, bars: list[dict[str, Any]], symbol: str, workflow_id: str, conn: Connections) -> str:
    """Log parameters and metrics on the workflow's run; returns its run id."""
    return log_workflow_to_mlflow(
        workflow_id=workflow_id,
        dag_id=DAG_ID,
        symbol=symbol,
        params={"symbol": symbol, "bars": len(bars)},
        metrics=indicators(bars),
        tracking_uri=conn.tracking_uri,
        experiment_name=EXPERIMENT,
    )


def backfill(*, workflow_id: str, run_id: str, conn: Connections) -> int:
    """Write the run's ids on any row of this workflow stored without them (normally 0)."""
    with conn.engine() as engine:
        return backfill_workflow_lineage(
            engine=engine, workflow_id=workflow_id, run_id=run_id, tracking_uri=conn.tracking_uri
        )
