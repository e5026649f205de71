"""Ids and keys are checked as whole strings: a trailing newline is not an id (pure units)."""

from __future__ import annotations

import uuid

import pytest

from gateway.errors import InvalidInputError
from gateway.gql.cursors import decode_cursor, encode_cursor
from gateway.lineage import Lineage, LineageSource, LineageStatus, candidates_of, decide
from gateway.minio_urls import UrlRefusal, parse_minio_url
from gateway.mlflow_backend import safe_run_ids
from gateway.mlflow_runs import is_mlflow_id, run_from_rest
from gateway.models import Artifact
from gateway.services import parse_artifact_id
from gateway.settings import Settings

RUN = uuid.uuid4().hex


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " ", "\x00"])
def test_an_id_with_anything_after_it_is_not_an_mlflow_id(suffix: str) -> None:
    assert is_mlflow_id(RUN)
    assert not is_mlflow_id(RUN + suffix)


def test_a_run_id_with_a_trailing_newline_is_never_put_in_a_filter() -> None:
    assert safe_run_ids([RUN, RUN + "\n"]) == [RUN]


def test_an_artifact_path_id_with_a_trailing_newline_is_malformed() -> None:
    assert parse_artifact_id("12") == 12
    with pytest.raises(InvalidInputError):
        parse_artifact_id("12\n")


def test_a_cursor_with_a_trailing_newline_is_refused() -> None:
    cursor = encode_cursor(41)
    assert decode_cursor(cursor) == 41
    with pytest.raises(InvalidInputError):
        decode_cursor(cursor + "\n")


def test_a_bucket_with_a_trailing_newline_is_refused() -> None:
    settings = Settings(minio_allowed_buckets=("charts",))
    assert not isinstance(parse_minio_url("s3://charts/a.png", settings), UrlRefusal)
    assert isinstance(parse_minio_url("charts\n/a.png", settings), UrlRefusal)


def test_a_stored_run_id_that_is_not_an_id_is_a_row_error_not_a_lookup() -> None:
    both = Artifact(id=1, name="a", artifact_type="chart", run_id=RUN + "\n", experiment_id="1")
    half = Artifact(id=2, name="b", artifact_type="chart", run_id=RUN + "\n")
    for row in (both, half):
        assert candidates_of(row) == []
        lineage = decide(row, {})
        assert isinstance(lineage, Lineage)
        assert (lineage.status, lineage.source) == (LineageStatus.UNRESOLVED, LineageSource.ROW)
        assert (lineage.run_id, lineage.experiment_id) == (None, None)
        assert lineage.reason == "the stored run_id is not an MLflow run id"


def test_a_stored_experiment_id_that_is_not_an_id_is_a_row_error() -> None:
    row = Artifact(id=1, name="a", artifact_type="chart", run_id=RUN, experiment_id="7\n")
    lineage = decide(row, {})
    assert isinstance(lineage, Lineage)
    assert lineage.status is LineageStatus.UNRESOLVED
    assert lineage.reason == "the stored experiment_id is not an MLflow experiment id"


def test_a_metadata_run_id_that_is_not_an_id_falls_through_to_the_workflow() -> None:
    row = Artifact(
        id=1, name="a", artifact_type="chart", meta={"mlflow_run_id": "not a run"}, workflow_id="w"
    )
    assert [key for _, key in candidates_of(row)] == [("workflow", "w")]
    lineage = decide(row, {("workflow", "w"): None})
    assert isinstance(lineage, Lineage)
    assert lineage.reason == (
        "metadata.mlflow_run_id is not an MLflow run id; no MLflow run tagged workflow_id=w"
    )


@pytest.mark.parametrize("start_time", ["²", "١٧٠٠٠٠٠٠٠٠٠٠٠"])
def test_a_run_time_in_non_ascii_digits_is_left_out_not_a_crash(start_time: str) -> None:
    run = run_from_rest(
        {"info": {"run_id": RUN, "experiment_id": "1", "start_time": start_time}, "data": {}}
    )
    assert run is not None
    assert run.start_time is None


def test_the_exact_filter_dags_utils_uses_keeps_tabs_and_newlines() -> None:
    from gateway.mlflow_backend import workflow_filter

    # dags_utils writes the tag as the DAG gave it and must find exactly that run again.
    assert workflow_filter("wf\tone\nline") == "tags.workflow_id = 'wf\tone\nline'"
    assert workflow_filter("it's") == 'tags.workflow_id = "it\'s"'
    assert workflow_filter("back\\slash") == "tags.workflow_id = 'back\\slash'"
    assert workflow_filter("both ' and \"") is None  # no exact filter can hold it
    assert workflow_filter("nul\x00") is None
