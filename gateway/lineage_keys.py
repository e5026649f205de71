"""Pure helpers that read lineage keys out of a row (shared by reads, repair and dags_utils)."""

from __future__ import annotations

from typing import Any

from gateway.models import Artifact


def _metadata_str(meta: Any, key: str) -> str | None:
    if isinstance(meta, dict):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def effective_workflow_id(row: Artifact) -> str | None:
    """Workflow id for lineage: the column, else metadata `workflow_id`, else `dag_run_id`."""
    if row.workflow_id:
        return row.workflow_id
    return _metadata_str(row.meta, "workflow_id") or _metadata_str(row.meta, "dag_run_id")


def metadata_run_id(row: Artifact) -> str | None:
    """The MLflow run id a DAG recorded in metadata, when it is there and a string."""
    return _metadata_str(row.meta, "mlflow_run_id")
