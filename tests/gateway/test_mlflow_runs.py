"""What the gateway reads out of MLflow's run answers: checked, sorted, never failing."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.mlflow_runs import Metric, Param, Tag, run_from_rest
from gateway.repository import WorkflowLineage
from gateway.run_graph import OTHER_WORKFLOWS, WorkflowCounts, gauge_values

RUN_ID = "0123456789abcdef0123456789abcdef"


def answer(**info: Any) -> dict[str, Any]:
    return {"info": {"run_id": RUN_ID, "experiment_id": "4", **info}, "data": {}}


def test_a_rest_run_is_read_whole_sorted_and_without_mlflows_own_tags() -> None:
    run = run_from_rest(
        {
            "info": {
                "run_id": RUN_ID,
                "experiment_id": "4",
                "run_name": "train",
                "status": "FINISHED",
                "start_time": "1793611800000",  # int64 as JSON gives it: a string
                "end_time": 1793611860000,
            },
            "data": {
                "params": [{"key": "window", "value": "20"}, {"key": "lr", "value": "0.1"}],
                "metrics": [
                    {"key": "sharpe", "value": 1.5, "step": "3", "timestamp": 1793611800500},
                    {"key": "loss", "value": 0.25, "step": 0, "timestamp": 1793611800000},
                ],
                "tags": [
                    {"key": "mlflow.user", "value": "airflow"},
                    {"key": "workflow_id", "value": "wf-1"},
                    {"key": "desk", "value": "fx"},
                ],
            },
        }
    )
    assert run is not None
    assert (run.run_id, run.experiment_id, run.name, run.status) == (
        RUN_ID,
        "4",
        "train",
        "FINISHED",
    )
    assert run.start_time == datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    assert run.end_time == datetime(2026, 11, 2, 9, 31, tzinfo=UTC)
    assert run.params == (Param("lr", "0.1"), Param("window", "20"))
    assert [m.key for m in run.metrics] == ["loss", "sharpe"]
    assert run.metrics[1] == Metric(
        "sharpe", 1.5, 3, datetime(2026, 11, 2, 9, 30, 0, 500_000, tzinfo=UTC)
    )
    assert run.tags == (Tag("desk", "fx"), Tag("workflow_id", "wf-1"))
    assert run.workflow_id == "wf-1"


def test_the_run_name_falls_back_to_mlflows_run_name_tag() -> None:
    run = run_from_rest(
        {**answer(), "data": {"tags": [{"key": "mlflow.runName", "value": "old-style"}]}}
    )
    assert run is not None
    assert (run.name, run.tags) == ("old-style", ())


def test_values_that_cannot_be_served_are_left_out_or_null() -> None:
    run = run_from_rest(
        {
            "info": {
                "run_id": RUN_ID,
                "experiment_id": "4",
                "status": "EXPLODED",
                "start_time": -5,
                "end_time": 10**30,
            },
            "data": {
                "metrics": [
                    {"key": "nan", "value": "NaN", "step": 2**40},
                    {"key": "inf", "value": math.inf},
                    {"key": 7, "value": 1.0},
                ],
                "params": [{"key": "p", "value": {"nested": True}}, "not an entry"],
                "tags": None,
            },
        }
    )
    assert run is not None
    assert (run.status, run.start_time, run.end_time, run.params, run.tags) == (
        None,
        None,
        None,
        (),
        (),
    )
    assert run.metrics == (Metric("inf", None, None, None), Metric("nan", None, None, None))


def test_an_answer_without_valid_ids_is_no_run() -> None:
    assert run_from_rest({"info": {"run_id": "x' OR '1'='1", "experiment_id": "4"}}) is None
    assert run_from_rest({"info": {"run_id": RUN_ID}}) is None
    assert run_from_rest(["not", "a", "run"]) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    info=st.dictionaries(
        st.sampled_from(["run_id", "experiment_id", "run_name", "status", "start_time"]),
        JSON_VALUES,
    ),
    data=JSON_VALUES,
)
def test_any_json_answer_reads_as_a_run_or_none_and_encodes_strictly(
    info: dict[str, Any], data: Any
) -> None:
    run = run_from_rest({"info": {"run_id": RUN_ID, "experiment_id": "1", **info}, "data": data})
    if run is None:
        return
    shown = [
        run.name,
        run.status,
        [(p.key, p.value) for p in run.params],
        [(m.key, m.value, m.step) for m in run.metrics],
        [(t.key, t.value) for t in run.tags],
    ]
    json.dumps(shown, allow_nan=False)  # raises on NaN or infinity
    assert all(isinstance(m.value, float | type(None)) for m in run.metrics)


def test_the_gauge_names_the_largest_workflows_and_sums_the_rest_as_other() -> None:
    workflows = [
        WorkflowLineage("wf-big", 100, 40),
        WorkflowLineage("wf-mid", 50, 0),
        WorkflowLineage(None, 30, 30),
        WorkflowLineage("wf-small", 10, 7),
        WorkflowLineage("wf-tiny", 2, 2),
    ]
    assert gauge_values(workflows, top=2) == {"wf-big": 40, "wf-mid": 0, OTHER_WORKFLOWS: 39}
    assert gauge_values(workflows, top=0) == {OTHER_WORKFLOWS: 79}


def test_an_empty_workflow_is_complete() -> None:
    assert WorkflowCounts("wf", 0, 0).completeness == 1.0
    assert WorkflowCounts("wf", 4, 1).completeness == 0.75
