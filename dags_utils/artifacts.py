"""Store artifacts from DAG tasks with their lineage, and backfill a workflow's rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from chartkit import load_snapshot
from dags_utils.mlflow_runs import capture_lineage
from gateway import repository, tracing
from gateway.models import Artifact, ArtifactType
from gateway.strictjson import storable_problem

log = structlog.get_logger("dags_utils")


def _persist(db: Engine | Session, row: Artifact) -> int:
    if isinstance(db, Session):
        # The caller owns the transaction: the row is flushed (to get its id), not committed.
        return repository.add_artifact(db, artifact=row)
    with Session(db) as session:
        artifact_id = repository.add_artifact(session, artifact=row)
        session.commit()
        return artifact_id


def require_storable(name: str, **columns: Any) -> None:
    """Raise ValueError naming the key path when a JSON column value is not strict JSON.

    Refused, not repaired: NaN, Infinity, lone surrogates and runaway nesting are not JSON
    (Python's `json` writes them anyway), and a row holding them breaks readers in other
    languages; the DAG author decides whether a gap is null or a dropped key.
    """
    for column, value in columns.items():
        problem = storable_problem(value, root=column)
        if problem is not None:
            raise ValueError(f"cannot store artifact {name!r}: {problem}")


def _store(
    db: Engine | Session,
    *,
    kind: ArtifactType,
    name: str,
    symbol: str | None,
    workflow_id: str | None,
    chart_data: dict[str, Any] | None,
    metadata: dict[str, Any],
    run_id: str | None,
    experiment_id: str | None,
    tracking_uri: str | None,
) -> int:
    # A child of whatever span the calling task has (an Airflow task's, when it traces).
    with tracing.span(
        "dags_utils.store_artifact", **{"artifact.type": kind.value, "workflow.id": workflow_id}
    ):
        require_storable(name, chart_data=chart_data, metadata=metadata)
        lineage = capture_lineage(
            run_id=run_id, experiment_id=experiment_id, tracking_uri=tracking_uri
        )
        row = Artifact(
            name=name,
            artifact_type=kind.value,
            symbol=symbol,
            workflow_id=workflow_id,
            run_id=lineage.run_id,
            experiment_id=lineage.experiment_id,
            chart_data=chart_data,
            meta=metadata,
        )
        artifact_id = _persist(db, row)
        log.info(
            "artifact.stored",
            artifact_id=artifact_id,
            artifact_type=kind.value,
            workflow_id=workflow_id,
            run_id=lineage.run_id,
            experiment_id=lineage.experiment_id,
            lineage_source=lineage.source,
        )
        tracing.set_attributes(**{"artifact.id": artifact_id})
    return artifact_id


def store_chart_artifact(
    db: Engine | Session,
    *,
    name: str,
    symbol: str | None,
    workflow_id: str | None,
    minio_url: str,
    market_data_snapshot: Any,
    chart_data: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Store a chart row: `chart_data.minio_url` plus the snapshot it was drawn from.

    The snapshot is validated with chartkit first (SnapshotError when it cannot be drawn),
    so every stored chart can be regenerated; values that are not strict JSON (NaN, Infinity,
    lone surrogates) raise ValueError naming their key path. Returns the new artifact id.
    """
    chart_columns = {
        "chart_data": {**(chart_data or {}), "minio_url": minio_url},
        "metadata": {**(metadata or {}), "market_data_snapshot": market_data_snapshot},
    }
    require_storable(name, **chart_columns)
    load_snapshot(market_data_snapshot)
    return _store(
        db,
        kind=ArtifactType.CHART,
        name=name,
        symbol=symbol,
        workflow_id=workflow_id,
        chart_data=chart_columns["chart_data"],
        metadata=chart_columns["metadata"],
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )


def store_llm_artifact(
    db: Engine | Session,
    *,
    name: str,
    symbol: str | None,
    workflow_id: str | None,
    text: str,
    model: str,
    metadata: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Store an LLM analysis (text and model name in metadata); returns the new id."""
    return _store(
        db,
        kind=ArtifactType.LLM,
        name=name,
        symbol=symbol,
        workflow_id=workflow_id,
        chart_data=None,
        metadata={**(metadata or {}), "text": text, "model": model},
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )


def store_signal_artifact(
    db: Engine | Session,
    *,
    name: str,
    symbol: str | None,
    workflow_id: str | None,
    signal: str,
    confidence: float | None = None,
    price: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Store a trading signal (`BUY`/`SELL`/`HOLD`, confidence, price); returns the new id."""
    fields = {"signal": signal, "confidence": confidence, "price": price}
    return _store(
        db,
        kind=ArtifactType.SIGNAL,
        name=name,
        symbol=symbol,
        workflow_id=workflow_id,
        chart_data=None,
        metadata={**(metadata or {}), **{k: v for k, v in fields.items() if v is not None}},
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )


def backfill_workflow_lineage(
    *,
    engine: Engine,
    workflow_id: str,
    run_id: str,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Write the run's ids on the workflow's rows that have none (compare-and-set).

    Called right after `log_workflow_to_mlflow`. The experiment id is looked up from MLflow
    when not given. Returns the number of rows written; never overwrites a stored id.
    """
    if experiment_id is None:
        from mlflow.tracking import MlflowClient

        experiment_id = str(
            MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
        )
    with Session(engine) as session:
        written = repository.set_workflow_lineage_if_null(
            session, workflow_id=workflow_id, run_id=run_id, experiment_id=experiment_id
        )
        session.commit()
    log.info(
        "lineage.backfilled",
        workflow_id=workflow_id,
        run_id=run_id,
        experiment_id=experiment_id,
        rows=written,
    )
    return written
