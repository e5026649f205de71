"""The resolution order as a pure function, with dict-backed lookups instead of MLflow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.lineage import (
    Key,
    Lineage,
    LineageSource,
    LineageStatus,
    Outcome,
    Unavailable,
    decide,
    resolve_row,
)
from gateway.mlflow_backend import RunRef
from gateway.models import Artifact

RUN = RunRef("run-1", "7")
LATEST = RunRef("run-9", "7")


def row(**fields: Any) -> Artifact:
    return Artifact(id=1, name="a", artifact_type="chart", **fields)


def resolve(artifact: Artifact, outcomes: dict[Key, Outcome]) -> tuple[Lineage, list[Key]]:
    asked: list[Key] = []

    async def load(key: Key) -> Outcome:
        asked.append(key)
        return outcomes.get(key)

    return asyncio.run(resolve_row(artifact, load)), asked


def test_stored_ids_need_no_lookup() -> None:
    lineage, asked = resolve(row(run_id="r", experiment_id="e"), {})
    assert lineage == Lineage(LineageStatus.STORED, LineageSource.ROW, "r", "e")
    assert asked == []


def test_metadata_run_id_wins_over_the_workflow() -> None:
    artifact = row(workflow_id="wf", meta={"mlflow_run_id": "run-1"})
    lineage, asked = resolve(artifact, {("run", "run-1"): RUN, ("workflow", "wf"): LATEST})
    assert lineage == Lineage(LineageStatus.HYDRATED, LineageSource.METADATA_RUN_ID, "run-1", "7")
    assert asked == [("run", "run-1")]


def test_an_unknown_run_id_falls_through_to_the_workflow() -> None:
    artifact = row(meta={"mlflow_run_id": "gone", "dag_run_id": "wf"})
    lineage, asked = resolve(artifact, {("workflow", "wf"): LATEST})
    assert lineage == Lineage(LineageStatus.HYDRATED, LineageSource.WORKFLOW_TAG, "run-9", "7")
    assert asked == [("run", "gone"), ("workflow", "wf")]


def test_a_stored_run_id_without_experiment_looks_up_only_that_run() -> None:
    lineage, asked = resolve(row(run_id="run-1", workflow_id="wf"), {("run", "run-1"): RUN})
    assert lineage.source is LineageSource.ROW
    assert asked == [("run", "run-1")]


def test_nothing_found_is_unresolved_with_every_reason() -> None:
    lineage, _ = resolve(row(workflow_id="wf", meta={"mlflow_run_id": "gone"}), {})
    assert lineage.status is LineageStatus.UNRESOLVED
    assert lineage.reason == "MLflow run gone not found; no MLflow run tagged workflow_id=wf"


def test_no_keys_at_all_is_unresolved_without_a_lookup() -> None:
    lineage, asked = resolve(row(), {})
    assert lineage == Lineage(
        LineageStatus.UNRESOLVED, reason="artifact has no run id and no workflow id"
    )
    assert asked == []


def test_an_unavailable_lookup_stops_the_walk() -> None:
    artifact = row(workflow_id="wf", meta={"mlflow_run_id": "run-1"})
    lineage, asked = resolve(artifact, {("run", "run-1"): Unavailable("MLflow did not answer")})
    assert lineage.status is LineageStatus.UNAVAILABLE
    assert lineage.reason == "MLflow did not answer"
    assert asked == [("run", "run-1")]


@pytest.mark.parametrize(
    ("known", "expected"),
    [({}, ("run", "run-1")), ({("run", "run-1"): None}, ("workflow", "wf"))],
)
def test_decide_names_the_next_key_to_look_up(known: dict[Key, Outcome], expected: Key) -> None:
    assert decide(row(workflow_id="wf", meta={"mlflow_run_id": "run-1"}), known) == expected


KEY_RUN = "0123456789abcdef0123456789abcdef"
KEYED = RunRef(KEY_RUN, "3")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"chart_data": {"minio_url": f"s3://mlflow/3/{KEY_RUN}/artifacts/chart.png"}}, KEY_RUN),
        ({"chart_data": {"minio_url": f"mlflow/artifacts/3/{KEY_RUN}/artifacts/c/d.png"}}, KEY_RUN),
        (
            {"meta": {"minio_url": f"http://minio:9000/b/3/{KEY_RUN}/artifacts/x.png?X-Sig=1"}},
            KEY_RUN,
        ),
        ({"path": f"/data/mlruns/3/{KEY_RUN}/artifacts/chart.png"}, KEY_RUN),
        ({"path": f"C:\\mlruns\\3\\{KEY_RUN}\\artifacts\\chart.png"}, KEY_RUN),
        ({"chart_data": {"minio_url": f"s3://b/AAPL/{KEY_RUN}/artifacts/c.png"}}, None),
        ({"chart_data": {"minio_url": f"s3://b/3/{KEY_RUN.upper()}/artifacts/c.png"}}, None),
        ({"chart_data": {"minio_url": f"s3://b/3/{KEY_RUN}/artifacts/"}}, None),
        ({"chart_data": {"minio_url": f"s3://b/3/{KEY_RUN}x/artifacts/c.png"}}, None),
        ({"chart_data": {"minio_url": f"s3://b/3/{KEY_RUN}/models/c.png"}}, None),
        ({"chart_data": {"minio_url": 42}, "path": None}, None),
        ({"path": "/" * 5000 + f"3/{KEY_RUN}/artifacts/c.png"}, None),
    ],
)
def test_an_object_key_in_mlflows_artifact_layout_names_its_run(
    fields: dict[str, Any], expected: str | None
) -> None:
    from gateway.rows import artifact_key_run_id

    assert artifact_key_run_id(row(**fields)) == expected


def test_an_object_key_is_tried_after_the_metadata_run_id_and_before_the_workflow() -> None:
    url = f"s3://mlflow/3/{KEY_RUN}/artifacts/chart.png"
    artifact = row(workflow_id="wf", chart_data={"minio_url": url}, meta={"mlflow_run_id": "gone"})
    outcomes = {("run", KEY_RUN): KEYED, ("workflow", "wf"): LATEST}
    lineage, asked = resolve(artifact, outcomes)
    assert lineage == Lineage(LineageStatus.HYDRATED, LineageSource.OBJECT_KEY, KEY_RUN, "3")
    assert asked == [("run", "gone"), ("run", KEY_RUN)]


def test_an_object_key_naming_a_run_mlflow_does_not_know_falls_through_to_the_workflow() -> None:
    artifact = row(workflow_id="wf", path=f"mlruns/3/{KEY_RUN}/artifacts/chart.png")
    lineage, asked = resolve(artifact, {("workflow", "wf"): LATEST})
    assert lineage == Lineage(LineageStatus.HYDRATED, LineageSource.WORKFLOW_TAG, "run-9", "7")
    assert asked == [("run", KEY_RUN), ("workflow", "wf")]
