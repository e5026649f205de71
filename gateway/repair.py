"""Repair legacy rows: resolve lineage and write it back with compare-and-set, in id batches."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gateway import repository, tracing
from gateway.lineage import Lineage, LineageStatus
from gateway.models import Artifact
from gateway.resolver import LineageResolver

log = structlog.get_logger("gateway.repair")
DEFAULT_BATCH = 200


class RepairOutcome(enum.StrEnum):
    """What happened to one row."""

    REPAIRED = "REPAIRED"
    WOULD_REPAIR = "WOULD_REPAIR"
    ALREADY_LINKED = "ALREADY_LINKED"
    UNRESOLVED = "UNRESOLVED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RepairItem:
    """One row's outcome."""

    artifact_id: int
    outcome: RepairOutcome
    run_id: str | None = None
    experiment_id: str | None = None
    reason: str | None = None


@dataclass
class RepairReport:
    """Counts and per-row outcomes; in a dry run `repaired` counts rows that would be written."""

    dry_run: bool
    scanned: int = 0
    repaired: int = 0
    already_linked: int = 0
    unresolved: int = 0
    unavailable: int = 0
    items: list[RepairItem] = field(default_factory=list)

    def add(self, item: RepairItem) -> None:
        """Count one row."""
        self.scanned += 1
        self.items.append(item)
        if item.outcome in (RepairOutcome.REPAIRED, RepairOutcome.WOULD_REPAIR):
            self.repaired += 1
        elif item.outcome is RepairOutcome.ALREADY_LINKED:
            self.already_linked += 1
        elif item.outcome is RepairOutcome.UNRESOLVED:
            self.unresolved += 1
        else:
            self.unavailable += 1


def _select_batch(
    session: Session,
    *,
    after_id: int | None,
    size: int,
    ids: Sequence[int] | None,
    workflow_id: str | None,
) -> list[Artifact]:
    if ids is not None:
        wanted = sorted(i for i in set(ids) if after_id is None or i > after_id)[:size]
        rows = [repository.get_artifact(session, artifact_id=i) for i in wanted]
        return [row for row in rows if row is not None]
    page = repository.list_artifacts(
        session, first=size, after_id=after_id, workflow_id=workflow_id, missing_lineage=True
    )
    return list(page.items)


def _row_id(row: Artifact) -> int:
    assert row.id is not None
    return row.id


def _write(session: Session, *, pairs: list[tuple[Artifact, Lineage]]) -> list[bool]:
    # One compare-and-set per distinct (run, experiment): a batch's rows mostly share a few.
    by_ids: dict[tuple[str, str], list[int]] = {}
    for row, lineage in pairs:
        assert lineage.run_id is not None
        assert lineage.experiment_id is not None
        by_ids.setdefault((lineage.run_id, lineage.experiment_id), []).append(_row_id(row))
    written: set[int] = set()
    for (run_id, experiment_id), artifact_ids in by_ids.items():
        written |= repository.set_lineage_if_null(
            session, artifact_ids=artifact_ids, run_id=run_id, experiment_id=experiment_id
        )
    return [_row_id(row) in written for row, _ in pairs]


async def repair_lineage(
    *,
    engine: Engine,
    resolver: LineageResolver,
    ids: Sequence[int] | None = None,
    workflow_id: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[RepairReport], None] | None = None,
) -> RepairReport:
    """Resolve rows with null lineage and write the ids back, never overwriting a value.

    Rows are walked by id in batches; each write is `... WHERE id = :id AND run_id IS NULL`,
    so a second run writes nothing and two concurrent runs write each row once. `ids`
    restricts the run to those rows (already-linked ones are reported, not touched).
    """
    report = RepairReport(dry_run=dry_run)
    after_id: int | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        rows = await repository.run_in_session(
            engine, _select_batch, after_id=after_id, size=size, ids=ids, workflow_id=workflow_id
        )
        if not rows:
            break
        after_id = rows[-1].id
        if remaining is not None:
            remaining -= len(rows)
        await _repair_batch(rows, engine=engine, resolver=resolver, report=report)
        if on_batch is not None:
            on_batch(report)
    await _finish(report, engine=engine, resolver=resolver)
    return report


async def _repair_batch(
    rows: list[Artifact], *, engine: Engine, resolver: LineageResolver, report: RepairReport
) -> None:
    with tracing.span(
        "repair.batch", **{"repair.rows": len(rows), "repair.dry_run": report.dry_run}
    ):
        await _repair_rows(rows, engine=engine, resolver=resolver, report=report)


async def _repair_rows(
    rows: list[Artifact], *, engine: Engine, resolver: LineageResolver, report: RepairReport
) -> None:
    # Rows the caller named that are already linked are reported, never re-resolved.
    pending = [r for r in rows if not (r.run_id and r.experiment_id)]
    for row in rows:
        if row.run_id and row.experiment_id:
            report.add(
                RepairItem(
                    _row_id(row), RepairOutcome.ALREADY_LINKED, row.run_id, row.experiment_id
                )
            )
    lineages = await resolver.resolve_rows(pending)
    writable = [(row, lin) for row, lin in zip(pending, lineages, strict=True) if lin.linked]
    written: dict[int, bool] = {}
    if writable and not report.dry_run:
        flags = await repository.run_in_session(engine, _write, pairs=writable)
        written = {_row_id(row): flag for (row, _), flag in zip(writable, flags, strict=True)}
    for row, lineage in zip(pending, lineages, strict=True):
        report.add(_item(row, lineage, dry_run=report.dry_run, written=written.get(_row_id(row))))


async def _finish(report: RepairReport, *, engine: Engine, resolver: LineageResolver) -> None:
    for item in report.items:
        resolver.metrics.lineage_repairs.labels(item.outcome.value).inc()
    resolver.metrics.missing_lineage.set(
        await repository.run_in_session(engine, repository.count_missing_lineage)
    )
    log.info(
        "lineage.repair_finished",
        dry_run=report.dry_run,
        scanned=report.scanned,
        repaired=report.repaired,
        already_linked=report.already_linked,
        unresolved=report.unresolved,
        unavailable=report.unavailable,
    )


def _item(row: Artifact, lineage: Lineage, *, dry_run: bool, written: bool | None) -> RepairItem:
    assert row.id is not None
    if lineage.status is LineageStatus.UNAVAILABLE:
        return RepairItem(row.id, RepairOutcome.UNAVAILABLE, reason=lineage.reason)
    if not lineage.linked:
        return RepairItem(row.id, RepairOutcome.UNRESOLVED, reason=lineage.reason)
    if dry_run:
        return RepairItem(row.id, RepairOutcome.WOULD_REPAIR, lineage.run_id, lineage.experiment_id)
    if written:
        log.info(
            "lineage.repaired",
            artifact_id=row.id,
            run_id=lineage.run_id,
            experiment_id=lineage.experiment_id,
            source=lineage.source,
        )
        return RepairItem(row.id, RepairOutcome.REPAIRED, lineage.run_id, lineage.experiment_id)
    return RepairItem(
        row.id,
        RepairOutcome.ALREADY_LINKED,
        lineage.run_id,
        lineage.experiment_id,
        reason="written by another repair in the meantime",
    )
