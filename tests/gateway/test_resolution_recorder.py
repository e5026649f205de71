"""Counting and logging resolutions: each one is counted; its event is built only at a level
that logs it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from gateway.lineage import Lineage, LineageSource, LineageStatus
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.resolver import ResolutionRecorder

HYDRATED = Lineage(LineageStatus.HYDRATED, LineageSource.WORKFLOW_TAG, "run-9", "7")
UNRESOLVED = Lineage(LineageStatus.UNRESOLVED, reason="no MLflow run tagged workflow_id=wf")
UNAVAILABLE = Lineage(LineageStatus.UNAVAILABLE, LineageSource.WORKFLOW_TAG, reason="down")
STORED = Lineage(LineageStatus.STORED, LineageSource.ROW, "run-1", "7")

Events = list[dict[str, Any]]


@pytest.fixture
def logging_at() -> Iterator[Callable[[int], Events]]:
    """Configure structlog to keep the events of a level and above; restored afterwards."""
    previous = structlog.get_config()

    def configure(level: int) -> Events:
        capture = structlog.testing.LogCapture()
        structlog.configure(
            processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(level)
        )
        return capture.entries

    yield configure
    structlog.configure(**previous)


def record_each(metrics: Metrics) -> None:
    record = ResolutionRecorder(metrics.lineage_resolutions.labels)
    row = Artifact(id=5, name="a", artifact_type="llm", workflow_id="wf")
    for lineage in (HYDRATED, UNRESOLVED, UNAVAILABLE, STORED, HYDRATED):
        record(row, lineage)


def counted(metrics: Metrics, status: str, source: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_lineage_resolutions_total", {"status": status, "source": source}
    )


def test_every_resolution_is_counted_when_its_events_are_filtered_out(
    logging_at: Callable[[int], Events],
) -> None:
    events = logging_at(logging.ERROR)
    metrics = Metrics()
    record_each(metrics)
    assert counted(metrics, "HYDRATED", "workflow_tag") == 2
    assert counted(metrics, "UNRESOLVED", "none") == 1
    assert counted(metrics, "UNAVAILABLE", "workflow_tag") == 1
    assert counted(metrics, "STORED", "row") == 1
    assert events == []


def test_only_unavailable_is_logged_when_info_is_filtered_out(
    logging_at: Callable[[int], Events],
) -> None:
    events = logging_at(logging.WARNING)
    record_each(Metrics())
    assert [(e["event"], e["log_level"]) for e in events] == [("lineage.unavailable", "warning")]
    assert events[0]["reason"] == "down"


def test_hydrated_and_unresolved_rows_are_logged_with_their_ids_at_info(
    logging_at: Callable[[int], Events],
) -> None:
    events = logging_at(logging.INFO)
    record_each(Metrics())
    assert [e["event"] for e in events] == [
        "lineage.hydrated",
        "lineage.unresolved",
        "lineage.unavailable",
        "lineage.hydrated",
    ]
    hydrated = events[0]
    assert (hydrated["artifact_id"], hydrated["workflow_id"], hydrated["run_id"]) == (
        5,
        "wf",
        "run-9",
    )
    assert hydrated["source"] is LineageSource.WORKFLOW_TAG
    assert events[1]["reason"] == "no MLflow run tagged workflow_id=wf"
