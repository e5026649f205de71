"""Field accessors for artifact rows: the one place that knows where a value lives in a row.

Other writers fill the JSON columns with any shape, so every accessor checks what it finds and
answers None (or a stated fallback) instead of failing. Shared by reads, images, repair, verify,
the pages and dags_utils.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from chartkit import ChartSpec
from chartkit.spec import MAX_SYMBOL_CHARS
from gateway.models import Artifact, ArtifactType
from gateway.strictjson import UnreadableJSON


def meta_dict(row: Artifact) -> dict[str, Any]:
    """`metadata` when it is an object, else an empty dict."""
    return row.meta if isinstance(row.meta, dict) else {}


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


# The metadata key holding a chart's market data: most of a chart row's bytes.
SNAPSHOT_KEY = "market_data_snapshot"


def snapshot_of(row: Artifact) -> Any | None:
    """The stored market-data snapshot, if any."""
    return meta_dict(row).get(SNAPSHOT_KEY)


def without_snapshot(metadata: Any) -> Any:
    """A metadata value as a listed row holds it: an object without its snapshot, any other
    value as it is."""
    if isinstance(metadata, dict) and SNAPSHOT_KEY in metadata:
        return {key: value for key, value in metadata.items() if key != SNAPSHOT_KEY}
    return metadata


# Longer stored locations are not searched for a run id (no key is that long).
MAX_ARTIFACT_KEY_CHARS = 4096
# MLflow's artifact layout: <experiment_id>/<run_id>/artifacts/<path>, under any root (an
# S3 bucket and prefix, mlflow-artifacts:/, a local mlruns/ directory). Run ids are uuid4 hex.
_MLFLOW_ARTIFACT_KEY = re.compile(r"(?:^|/)[0-9]{1,19}/([0-9a-f]{32})/artifacts/[^/]")


def artifact_key_run_id(row: Artifact) -> str | None:
    """The run id named by a stored object key (`minio_url`, else the legacy `path`) that
    follows MLflow's artifact layout; None when neither does. Text only: nothing is fetched."""
    for location in (minio_url_of(row), row.path):
        if isinstance(location, str) and len(location) <= MAX_ARTIFACT_KEY_CHARS:
            found = _MLFLOW_ARTIFACT_KEY.search(location.split("?", 1)[0].replace("\\", "/"))
            if found is not None:
                return found.group(1)
    return None


def renderer_version_of(row: Artifact) -> str | None:
    """The chartkit version that drew the published chart (`metadata.chartkit_version`)."""
    return _metadata_str(row.meta, "chartkit_version")


def minio_url_of(row: Artifact) -> Any | None:
    """`chart_data.minio_url`, else `metadata.minio_url`."""
    for holder in (row.chart_data, row.meta):
        if isinstance(holder, dict) and holder.get("minio_url"):
            return holder["minio_url"]
    return None


def image_url_of(row: Artifact) -> str | None:
    """The gateway's image route for chart artifacts, None for other kinds."""
    if row.artifact_type == ArtifactType.CHART and row.id is not None:
        return f"/api/artifacts/{row.id}/image"
    return None


def created_at_of(row: Artifact) -> datetime | None:
    """`created_at` in UTC (naive values are UTC by contract); None when it was unreadable."""
    value = row.created_at
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def json_field(value: Any) -> tuple[Any, str | None]:
    """A JSON column's value to serve, and why it is null when it could not be read."""
    if isinstance(value, UnreadableJSON):
        return None, value.reason
    return value, None


SpecOrigin = Literal["recorded", "default", "refused"]


@dataclass(frozen=True, slots=True)
class SpecChoice:
    """The spec a regenerated chart is drawn with, and where it came from.

    `origin` is `recorded` (metadata.chart_spec), `default` (none recorded) or `refused` (one
    was recorded but cannot be used; `problem` says why, and the default is drawn instead).
    """

    spec: ChartSpec
    origin: SpecOrigin
    problem: str | None = None


def chart_spec_for(row: Artifact) -> SpecChoice:
    """The spec a regenerated chart of this row uses: the recorded one, else the default."""
    recorded = meta_dict(row).get("chart_spec")
    spec, problem = ChartSpec(), None
    origin: SpecOrigin = "default"
    if recorded is not None:
        try:
            if not isinstance(recorded, dict):
                raise TypeError(f"chart_spec is {type(recorded).__name__}, not an object")
            spec, origin = ChartSpec.from_dict(recorded), "recorded"
        except (TypeError, ValueError) as exc:
            spec, origin, problem = ChartSpec(), "refused", str(exc)[:200]
    if spec.symbol is None and isinstance(row.symbol, str) and row.symbol.strip():
        # The title shows the symbol; a column holding an essay is cut, not drawn whole.
        spec = ChartSpec.from_dict({**spec.to_dict(), "symbol": row.symbol[:MAX_SYMBOL_CHARS]})
    return SpecChoice(spec, origin, problem)
