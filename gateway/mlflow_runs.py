"""An MLflow run as the gateway shows it, read out of MLflow's answers and checked first.

MLflow's REST answer (`runs/search`) and the local store's entities carry the same run; both
are turned into one `RunRecord` here. Nothing read from MLflow is trusted as is: ids must be
ids, numbers finite, times within range and strings strings, and whatever is not is left out
(an entry) or null (a field), so no answer built from a record can fail to encode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# MLflow's own run states; any other value is not shown.
RUN_STATUSES = frozenset({"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"})
# Tags MLflow writes for itself (source, user, run name, notes): not the user's tags.
SYSTEM_TAG_PREFIX = "mlflow."
# MLflow's limits are 250 characters for a key and 8,000 for a param or tag value (6,000 in
# older servers); a longer value did not come from MLflow's own validation and is cut.
MAX_KEY_CHARS = 250
MAX_VALUE_CHARS = 8000
# Matched against the whole string (`fullmatch`): `^...$` with `match` lets a final newline by.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Milliseconds since the epoch that Python's datetime can hold (years 1-9999 UTC), from 1970.
_MAX_EPOCH_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class Param:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric's latest value (None when MLflow holds NaN or an infinity)."""

    key: str
    value: float | None
    step: int | None
    timestamp: datetime | None


@dataclass(frozen=True, slots=True)
class Tag:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment as the listing names it."""

    experiment_id: str
    name: str | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: its info, params and latest metrics (sorted by key), and its user tags.

    `workflow_id` is the `workflow_id` tag (lineage's join key), also among `tags`.
    """

    run_id: str
    experiment_id: str
    name: str | None = None
    status: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    params: tuple[Param, ...] = ()
    metrics: tuple[Metric, ...] = ()
    tags: tuple[Tag, ...] = ()

    @property
    def workflow_id(self) -> str | None:
        for tag in self.tags:
            if tag.key == "workflow_id":
                return tag.value
        return None


def is_mlflow_id(value: Any) -> bool:
    """An id as MLflow writes them (runs: hex; experiments: digits), safe in a filter string."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _epoch_ms(value: Any) -> datetime | None:
    """A time from MLflow's milliseconds (an int, or the decimal string int64 becomes in JSON)."""
    # ASCII digits only: `isdigit` also holds for "²" (which `int` refuses) and other scripts.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_EPOCH_MS:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _step(value: Any) -> int | None:
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    # GraphQL's Int is 32-bit: a step beyond it is not shown rather than failing the field.
    return value if -(2**31) <= value < 2**31 else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _pairs(entries: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """Key/value string pairs, one per key (the last wins), sorted by key."""
    kept: dict[str, str] = {}
    for key, value in entries:
        key_text, value_text = _text(key, MAX_KEY_CHARS), _text(value, MAX_VALUE_CHARS)
        if key_text and value_text is not None:
            kept[key_text] = value_text
    return sorted(kept.items())


def _record(
    *,
    run_id: Any,
    experiment_id: Any,
    name: Any,
    status: Any,
    start_time: Any,
    end_time: Any,
    params: Iterable[tuple[Any, Any]],
    metrics: Iterable[tuple[Any, Any, Any, Any]],
    tags: Iterable[tuple[Any, Any]],
) -> RunRecord | None:
    if not is_mlflow_id(run_id) or not is_mlflow_id(experiment_id):
        return None
    user_tags = _pairs(tags)
    run_name = _text(name, MAX_KEY_CHARS) or dict(user_tags).get("mlflow.runName")
    latest: dict[str, Metric] = {}
    for key, value, step, timestamp in metrics:
        key_text = _text(key, MAX_KEY_CHARS)
        if key_text:
            latest[key_text] = Metric(key_text, _finite(value), _step(step), _epoch_ms(timestamp))
    return RunRecord(
        run_id=run_id,
        experiment_id=experiment_id,
        name=run_name or None,
        status=status if isinstance(status, str) and status in RUN_STATUSES else None,
        start_time=_epoch_ms(start_time),
        end_time=_epoch_ms(end_time),
        params=tuple(Param(k, v) for k, v in _pairs(params)),
        metrics=tuple(latest[key] for key in sorted(latest)),
        tags=tuple(Tag(k, v) for k, v in user_tags if not k.startswith(SYSTEM_TAG_PREFIX)),
    )


def _entries(value: Any) -> list[dict[str, Any]]:
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def run_from_rest(value: Any) -> RunRecord | None:
    """A run of a REST `runs/search` answer; None when it does not name a run by valid ids."""
    if not isinstance(value, dict) or not isinstance(info := value.get("info"), dict):
        return None
    data: dict[str, Any] = value["data"] if isinstance(value.get("data"), dict) else {}
    return _record(
        run_id=info.get("run_id", info.get("run_uuid")),
        experiment_id=info.get("experiment_id"),
        name=info.get("run_name"),
        status=info.get("status"),
        start_time=info.get("start_time"),
        end_time=info.get("end_time"),
        params=((p.get("key"), p.get("value")) for p in _entries(data.get("params"))),
        metrics=(
            (m.get("key"), m.get("value"), m.get("step"), m.get("timestamp"))
            for m in _entries(data.get("metrics"))
        ),
        tags=((t.get("key"), t.get("value")) for t in _entries(data.get("tags"))),
    )


def run_from_entity(run: Any) -> RunRecord | None:
    """A run of the local store (`mlflow.entities.Run`)."""
    info, data = run.info, run.data
    # `data.metrics` holds only values; the Metric objects beside it have step and time.
    metric_objects = getattr(data, "_metric_objs", None)
    if metric_objects is not None:
        metrics = [(m.key, m.value, m.step, m.timestamp) for m in metric_objects]
    else:
        metrics = [(k, v, None, None) for k, v in data.metrics.items()]
    return _record(
        run_id=info.run_id,
        experiment_id=info.experiment_id,
        name=getattr(info, "run_name", None),
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        params=data.params.items(),
        metrics=metrics,
        tags=data.tags.items(),
    )


def experiment_from_rest(value: Any) -> Experiment | None:
    """An experiment of a REST `experiments/search` answer, or None."""
    if not isinstance(value, dict) or not is_mlflow_id(value.get("experiment_id")):
        return None
    return Experiment(value["experiment_id"], _text(value.get("name"), MAX_VALUE_CHARS))
