"""Lineage rules: which MLflow run made an artifact, decided from what is known, side-effect free.

Order (README, "Lineage"): ids stored on the row -> STORED; a run id (row, else
metadata.mlflow_run_id, else the one an object key in MLflow's artifact layout names) -> that
run's experiment -> HYDRATED; a workflow id -> the latest run tagged workflow_id -> HYDRATED;
else UNRESOLVED with a reason (a lookup MLflow refuses, a 4xx, reads as not found; a stored id
that cannot be MLflow's is never looked up); MLflow unreachable or too slow -> UNAVAILABLE.

This module is the rules and the one shape every client is shown (`lineage_view`); the lookups
that feed them, with their caches, breaker and warm-up, are `gateway.resolver`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from gateway.mlflow_backend import RunRef
from gateway.mlflow_runs import is_mlflow_id
from gateway.models import Artifact
from gateway.rows import artifact_key_run_id, effective_workflow_id, metadata_run_id


class LineageStatus(enum.StrEnum):
    """How an artifact's lineage was obtained, or why not."""

    STORED = "STORED"
    HYDRATED = "HYDRATED"
    UNRESOLVED = "UNRESOLVED"
    UNAVAILABLE = "UNAVAILABLE"


class LineageSource(enum.StrEnum):
    """Where the run was found."""

    ROW = "row"
    METADATA_RUN_ID = "metadata_run_id"
    # The stored object's key follows MLflow's artifact layout, which names the run.
    OBJECT_KEY = "object_key"
    WORKFLOW_TAG = "workflow_tag"


@dataclass(frozen=True, slots=True)
class Lineage:
    """The resolved lineage of one artifact; ids are None unless STORED or HYDRATED."""

    status: LineageStatus
    source: LineageSource | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    reason: str | None = None

    @property
    def linked(self) -> bool:
        """Both ids are known."""
        return self.run_id is not None and self.experiment_id is not None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A lookup that MLflow could not answer (not cached)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A lookup that MLflow answered by refusing it (HTTP 4xx): it fails, MLflow is up (not
    cached; never feeds the breaker)."""

    reason: str = "MLflow refused the lookup"


Outcome: TypeAlias = RunRef | Unavailable | Refused | None
Key: TypeAlias = tuple[str, str]  # ("run", run_id) or ("workflow", workflow_id)


def stored_problem(row: Artifact) -> str | None:
    """Why the ids stored on the row cannot be MLflow's (then the row is never looked up by
    them), or None when they can be or none is stored."""
    if row.run_id and not is_mlflow_id(row.run_id):
        return "the stored run_id is not an MLflow run id"
    if row.run_id and row.experiment_id and not is_mlflow_id(row.experiment_id):
        return "the stored experiment_id is not an MLflow experiment id"
    return None


def _metadata_problem(row: Artifact) -> str | None:
    meta_run = metadata_run_id(row)
    if meta_run and not is_mlflow_id(meta_run):
        return "metadata.mlflow_run_id is not an MLflow run id"
    return None


def candidates_of(row: Artifact) -> list[tuple[LineageSource, Key]]:
    """The lookups that can resolve a row, in the design's order (none for stored ids, nor for
    a stored value that cannot be an MLflow id: that is never sent to MLflow)."""
    if row.run_id:
        if row.experiment_id or stored_problem(row) is not None:
            return []
        return [(LineageSource.ROW, ("run", row.run_id))]
    found: list[tuple[LineageSource, Key]] = []
    meta_run = metadata_run_id(row)
    if meta_run and is_mlflow_id(meta_run):
        found.append((LineageSource.METADATA_RUN_ID, ("run", meta_run)))
    key_run = artifact_key_run_id(row)
    if key_run and key_run != meta_run:
        # Confirmed like any run id, in the same batched search: one MLflow does not know
        # falls through to the workflow tag.
        found.append((LineageSource.OBJECT_KEY, ("run", key_run)))
    workflow_id = effective_workflow_id(row)
    if workflow_id:
        found.append((LineageSource.WORKFLOW_TAG, ("workflow", workflow_id)))
    return found


def decide(
    row: Artifact,
    known: Mapping[Key, Outcome],
    candidates: list[tuple[LineageSource, Key]] | None = None,
) -> Lineage | Key:
    """The row's lineage from the outcomes known so far, or the next key that must be looked up.
    `candidates` are the row's `candidates_of`, when the caller has them already."""
    problem = stored_problem(row)
    if problem is not None:
        # A field error of this row, told as its lineage: the value is never sent to MLflow.
        return Lineage(LineageStatus.UNRESOLVED, LineageSource.ROW, reason=problem)
    if row.run_id and row.experiment_id:
        return Lineage(LineageStatus.STORED, LineageSource.ROW, row.run_id, row.experiment_id)
    if candidates is None:
        candidates = candidates_of(row)
    reasons = []
    if not row.run_id and (metadata_problem := _metadata_problem(row)) is not None:
        reasons.append(metadata_problem)
    if not candidates:
        if reasons:
            return Lineage(LineageStatus.UNRESOLVED, reason="; ".join(reasons))
        return Lineage(LineageStatus.UNRESOLVED, reason="artifact has no run id and no workflow id")
    for source, key in candidates:
        if key not in known:
            return key
        outcome = known[key]
        if isinstance(outcome, RunRef):
            return Lineage(LineageStatus.HYDRATED, source, outcome.run_id, outcome.experiment_id)
        if isinstance(outcome, Unavailable):
            return Lineage(LineageStatus.UNAVAILABLE, source, reason=outcome.reason)
        if isinstance(outcome, Refused):
            reasons.append(outcome.reason)
            continue
        kind, value = key
        reasons.append(
            f"MLflow run {value} not found"
            if kind == "run"
            else f"no MLflow run tagged workflow_id={value}"
        )
    return Lineage(LineageStatus.UNRESOLVED, reason="; ".join(reasons))


async def resolve_row(row: Artifact, load: Callable[[Key], Awaitable[Outcome]]) -> Lineage:
    """Apply the resolution order to one row, loading runs through `load`."""
    known: dict[Key, Outcome] = {}
    while not isinstance(step := decide(row, known), Lineage):
        known[step] = await load(step)
    return step


def run_url(ui_url: str | None, lineage: Lineage) -> str | None:
    """MLflow UI link to the run, when both ids and a UI base are known."""
    if ui_url and lineage.linked:
        return f"{ui_url.rstrip('/')}/#/experiments/{lineage.experiment_id}/runs/{lineage.run_id}"
    return None


def experiment_url(ui_url: str | None, lineage: Lineage) -> str | None:
    """MLflow UI link to the experiment."""
    if ui_url and lineage.experiment_id is not None:
        return f"{ui_url.rstrip('/')}/#/experiments/{lineage.experiment_id}"
    return None


@dataclass(frozen=True, slots=True)
class LineageView:
    """What every client is shown of a lineage: the ids, how they were found, and the links."""

    status: LineageStatus
    source: LineageSource | None
    reason: str | None
    run_id: str | None
    experiment_id: str | None
    run_url: str | None
    experiment_url: str | None

    @property
    def unresolved(self) -> bool:
        """True when the ids are missing (not found, or MLflow unavailable)."""
        return self.status in (LineageStatus.UNRESOLVED, LineageStatus.UNAVAILABLE)


def lineage_view(lineage: Lineage, *, ui_url: str | None) -> LineageView:
    """The lineage with its MLflow UI links, as REST, GraphQL and the pages show it."""
    return LineageView(
        status=lineage.status,
        source=lineage.source,
        reason=lineage.reason,
        run_id=lineage.run_id,
        experiment_id=lineage.experiment_id,
        run_url=run_url(ui_url, lineage),
        experiment_url=experiment_url(ui_url, lineage),
    )
