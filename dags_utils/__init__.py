"""Helpers that Airflow tasks import to store artifacts with lineage (no Airflow import)."""

from dags_utils.artifacts import (
    backfill_workflow_lineage,
    store_chart_artifact,
    store_llm_artifact,
    store_signal_artifact,
)
from dags_utils.mlflow_runs import (
    capture_lineage,
    log_workflow_to_mlflow,
    mlflow_run_context,
    workflow_tags,
)

__all__ = [
    "backfill_workflow_lineage",
    "capture_lineage",
    "log_workflow_to_mlflow",
    "mlflow_run_context",
    "store_chart_artifact",
    "store_llm_artifact",
    "store_signal_artifact",
    "workflow_tags",
]
