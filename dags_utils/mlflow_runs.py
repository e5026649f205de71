"""MLflow run helpers for DAG tasks: open the workflow's run, log it, tag it for lineage."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.mlflow_backend import workflow_filter

DEFAULT_EXPERIMENT = "trading-analytics"
log = structlog.get_logger("dags_utils")


def workflow_tags(
    *,
    workflow_id: str,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
    symbol: str | None = None,
) -> dict[str, str]:
    """The tags every workflow run carries; `workflow_id` is the lineage join key."""
    tags = {
        "workflow_id": workflow_id,
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "symbol": symbol,
    }
    return {k: v for k, v in tags.items() if v}


def _client(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name))


def _workflow_filter(workflow_id: str) -> str:
    # The exact filter (no LIKE look-alikes: the first run found is taken); the gateway finds
    # the same run by the same tag value, exactly or through its narrowed LIKE search.
    filter_string = workflow_filter(workflow_id)
    if filter_string is None:
        raise ValueError(f"workflow id {workflow_id!r} cannot be used as an MLflow filter value")
    return filter_string


def find_workflow_run(client: Any, experiment_id: str, workflow_id: str) -> Any | None:
    """The latest run of the experiment tagged with this workflow id, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=_workflow_filter(workflow_id),
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


@contextmanager
def mlflow_run_context(
    *,
    workflow_id: str,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
    symbol: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> Iterator[Any]:
    """Start, or resume, the MLflow run of a workflow as the active run, tagged for lineage.

    Inside the block `mlflow.active_run()` is this run, so `store_*_artifact` records its ids.
    """
    import mlflow

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name)
    existing = find_workflow_run(client, experiment_id, workflow_id)
    tags = workflow_tags(
        workflow_id=workflow_id, dag_id=dag_id, dag_run_id=dag_run_id, symbol=symbol
    )
    with mlflow.start_run(
        run_id=existing.info.run_id if existing is not None else None,
        experiment_id=None if existing is not None else experiment_id,
        run_name=None if existing is not None else (run_name or workflow_id),
        tags=tags,
    ) as run:
        if existing is not None:
            mlflow.set_tags(tags)
        log.info(
            "mlflow.run_opened",
            workflow_id=workflow_id,
            run_id=run.info.run_id,
            resumed=existing is not None,
        )
        yield run


def log_workflow_to_mlflow(
    *,
    workflow_id: str,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
    symbol: str | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tracking_uri: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
) -> str:
    """Log the workflow's run (params, metrics, lineage tags) and return its run id.

    Logs into the workflow's existing run when there is one, else creates a finished run.
    """
    from mlflow.entities import Metric, Param, RunTag

    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name)
    tags = workflow_tags(
        workflow_id=workflow_id, dag_id=dag_id, dag_run_id=dag_run_id, symbol=symbol
    )
    existing = find_workflow_run(client, experiment_id, workflow_id)
    if existing is not None:
        run_id = str(existing.info.run_id)
        created = False
    else:
        run_id = str(client.create_run(experiment_id, tags=tags, run_name=workflow_id).info.run_id)
        created = True
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if created:
        client.set_terminated(run_id, "FINISHED")
    log.info("mlflow.workflow_logged", workflow_id=workflow_id, run_id=run_id, created=created)
    return run_id


@dataclass(frozen=True)
class CapturedLineage:
    """Lineage ids for a new row and where they came from."""

    run_id: str | None
    experiment_id: str | None
    source: str  # explicit | active_run | env | none


def capture_lineage(
    *,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> CapturedLineage:
    """Ids from, in order: explicit arguments, the active MLflow run, `MLFLOW_RUN_ID`."""
    if run_id:
        return CapturedLineage(
            run_id, experiment_id or _experiment_of(run_id, tracking_uri), "explicit"
        )
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return CapturedLineage(active.info.run_id, active.info.experiment_id, "active_run")
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run:
        env_experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
        return CapturedLineage(
            env_run, env_experiment or _experiment_of(env_run, tracking_uri), "env"
        )
    return CapturedLineage(None, None, "none")


def _experiment_of(run_id: str, tracking_uri: str | None) -> str | None:
    # Best effort: a row stored with its run id alone is still hydrated on read.
    try:
        return str(_client(tracking_uri).get_run(run_id).info.experiment_id)
    except Exception as exc:
        log.warning("mlflow.experiment_lookup_failed", run_id=run_id, error=type(exc).__name__)
        return None
