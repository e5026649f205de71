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
from dags_utils.publish import chart_object_key, publish_chart

__all__ = [
    "backfill_workflow_lineage",
    "capture_lineage",
    "chart_object_key",
    "log_workflow_to_mlflow",
    "mlflow_run_context",
    "publish_chart",
    "store_chart_artifact",
    "store_llm_artifact",
    "store_signal_artifact",
    "workflow_tags",
]
