"""The example DAG in Airflow's TaskFlow API (Airflow 2.4+ or 3; not a dependency here).

Copy `examples/market_analysis/` into the DAGs folder of an Airflow deployment whose workers
have this project installed and DATABASE_URL, MLFLOW_TRACKING_URI, MINIO_ENDPOINT,
MINIO_ACCESS_KEY and MINIO_SECRET_KEY set. The task bodies live in `tasks.py` and are tested
without Airflow.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.decorators import dag, task  # type: ignore[import-not-found]

from examples.market_analysis import tasks

SYMBOLS = ("AAPL", "MSFT", "NVDA")


@dag(
    dag_id=tasks.DAG_ID,
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["charts", "lineage"],
)
def market_analysis() -> None:
    @task
    def fetch_bars(symbol: str, data_interval_end: Any = None) -> list[dict[str, Any]]:
        return tasks.fetch_bars(symbol, end=data_interval_end)

    @task
    def open_run(symbol: str, run_id: str | None = None) -> str:
        dag_run_id = run_id or "manual"
        return tasks.open_run(
            symbol=symbol,
            workflow_id=tasks.workflow_id_for(symbol, dag_run_id),
            dag_run_id=dag_run_id,
            conn=tasks.Connections.from_env(),
        )

    @task
    def publish_chart(bars: list[dict[str, Any]], symbol: str, run_id: str | None = None) -> int:
        workflow_id = tasks.workflow_id_for(symbol, run_id or "manual")
        return tasks.publish(
            bars=bars, symbol=symbol, workflow_id=workflow_id, conn=tasks.Connections.from_env()
        )

    @task
    def analyse(bars: list[dict[str, Any]], symbol: str, run_id: str | None = None) -> int:
        workflow_id = tasks.workflow_id_for(symbol, run_id or "manual")
        return tasks.analyse(
            bars=bars, symbol=symbol, workflow_id=workflow_id, conn=tasks.Connections.from_env()
        )

    @task
    def signal(bars: list[dict[str, Any]], symbol: str, run_id: str | None = None) -> int:
        workflow_id = tasks.workflow_id_for(symbol, run_id or "manual")
        return tasks.signal(
            bars=bars, symbol=symbol, workflow_id=workflow_id, conn=tasks.Connections.from_env()
        )

    @task
    def log_and_backfill(
        bars: list[dict[str, Any]], symbol: str, stored: list[int], run_id: str | None = None
    ) -> int:
        conn = tasks.Connections.from_env()
        workflow_id = tasks.workflow_id_for(symbol, run_id or "manual")
        mlflow_run = tasks.log_run(bars=bars, symbol=symbol, workflow_id=workflow_id, conn=conn)
        return tasks.backfill(workflow_id=workflow_id, run_id=mlflow_run, conn=conn)

    for symbol in SYMBOLS:
        bars = fetch_bars.override(task_id=f"fetch_bars_{symbol}")(symbol)
        opened = open_run.override(task_id=f"open_run_{symbol}")(symbol)
        chart = publish_chart.override(task_id=f"publish_chart_{symbol}")(bars, symbol)
        text = analyse.override(task_id=f"analyse_{symbol}")(bars, symbol)
        trade = signal.override(task_id=f"signal_{symbol}")(bars, symbol)
        opened >> [chart, text, trade]
        log_and_backfill.override(task_id=f"log_and_backfill_{symbol}")(
            bars, symbol, [chart, text, trade]
        )


market_analysis()
