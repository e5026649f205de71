"""Prove that a stored chart is the chart its data describes (`gateway verify-charts`).

For each chart artifact: fetch the object at `chart_data.minio_url` (same URL rules as the image
route: never fetched as-is), regenerate the chart from `metadata.market_data_snapshot` with the
recorded `metadata.chart_spec`, and compare. Byte-identical is a match; otherwise both PNGs are
decoded and the share of pixels that differ is reported, as `renderer_changed` when the row says
an older chartkit drew it (new pixels are then expected, not evidence of tampering).
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import structlog
from minio import Minio
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session

import chartkit
from chartkit import SnapshotError, count_bars, render_chart
from gateway import repository
from gateway.minio_urls import ObjectLocation, parse_minio_url
from gateway.models import Artifact, ArtifactType
from gateway.objectstore import FetchFailure, fetch_png
from gateway.observability import Metrics
from gateway.rows import chart_spec_for, minio_url_of, renderer_version_of, snapshot_of
from gateway.settings import Settings

log = structlog.get_logger("gateway")

MAX_DECODED_PIXELS = 40_000_000  # a decompression bomb in the bucket must not take the checker


class Outcome(enum.StrEnum):
    """What verifying one chart found; the first five are the QA contract."""

    MATCH = "match"
    DIFFERS = "differs"
    OBJECT_MISSING = "object_missing"
    NO_SNAPSHOT = "no_snapshot"
    URL_REFUSED = "url_refused"
    BAD_SNAPSHOT = "bad_snapshot"  # a snapshot is stored but cannot be drawn
    UNAVAILABLE = "unavailable"  # MinIO did not answer: nothing was proven either way
    # Pixels differ and the row records another chartkit version than the one regenerating.
    RENDERER_CHANGED = "renderer_changed"


FAILING = frozenset({Outcome.DIFFERS, Outcome.UNAVAILABLE})


@dataclass(frozen=True)
class Verification:
    """The verdict on one chart artifact."""

    artifact_id: int
    name: str
    outcome: Outcome
    detail: str
    pixel_ratio: float | None = None
    minio_url: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}


def pixel_difference(stored: bytes, regenerated: bytes) -> float:
    """Share of pixels (0..1) whose RGBA differs; 1.0 when sizes differ or decoding fails."""
    try:
        with Image.open(io.BytesIO(stored)) as a, Image.open(io.BytesIO(regenerated)) as b:
            if a.size != b.size or a.width * a.height > MAX_DECODED_PIXELS:
                return 1.0
            left = np.asarray(a.convert("RGBA"))
            right = np.asarray(b.convert("RGBA"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return 1.0
    return float(np.any(left != right, axis=-1).mean())


def verify_row(row: Artifact, *, client: Minio, settings: Settings) -> Verification:
    """Verify one chart artifact (blocking: MinIO I/O and a render)."""
    assert row.id is not None
    url = minio_url_of(row)
    shown_url = url if isinstance(url, str) else None

    def verdict(outcome: Outcome, detail: str, ratio: float | None = None) -> Verification:
        return Verification(row.id or 0, row.name, outcome, detail, ratio, shown_url)

    location = parse_minio_url(url, settings)
    if not isinstance(location, ObjectLocation):
        return verdict(Outcome.URL_REFUSED, location.reason)
    snapshot = snapshot_of(row)
    if snapshot is None:
        return verdict(Outcome.NO_SNAPSHOT, "no metadata.market_data_snapshot to regenerate from")
    bars = count_bars(snapshot)
    if bars is not None and bars > settings.max_snapshot_bars:
        return verdict(Outcome.BAD_SNAPSHOT, f"{bars} bars, above GATEWAY_MAX_SNAPSHOT_BARS")
    fetched = fetch_png(
        client,
        location,
        max_bytes=settings.minio_max_object_bytes,
        deadline_s=settings.minio_read_deadline_s,
    )
    if isinstance(fetched, FetchFailure):
        if fetched.reason == "object_missing":
            return verdict(Outcome.OBJECT_MISSING, fetched.detail)
        if fetched.reason in ("not_png", "too_large"):
            return verdict(Outcome.DIFFERS, f"stored object: {fetched.detail}", 1.0)
        return verdict(Outcome.UNAVAILABLE, f"{fetched.reason}: {fetched.detail}")
    spec = chart_spec_for(row).spec
    try:
        regenerated = render_chart(snapshot, spec, max_snapshot_bars=settings.max_snapshot_bars)
    except SnapshotError as exc:
        return verdict(Outcome.BAD_SNAPSHOT, str(exc))
    if fetched.data == regenerated:
        return verdict(Outcome.MATCH, "byte-identical", 0.0)
    ratio = pixel_difference(fetched.data, regenerated)
    if ratio == 0.0:
        return verdict(Outcome.MATCH, "pixel-identical (PNG encoding differs)", 0.0)
    drawn_by = renderer_version_of(row)
    if drawn_by is not None and drawn_by != chartkit.__version__:
        detail = f"drawn by chartkit {drawn_by}, regenerated by {chartkit.__version__}"
        return verdict(Outcome.RENDERER_CHANGED, f"{detail}: {ratio:.2%} of pixels differ", ratio)
    return verdict(Outcome.DIFFERS, f"{ratio:.2%} of pixels differ", ratio)


def chart_rows(
    engine: Engine, *, limit: int | None, workflow_id: str | None, batch_size: int = 100
) -> Iterator[Artifact]:
    """Chart artifacts in id order, read a batch at a time."""
    after: int | None = None
    seen = 0
    while limit is None or seen < limit:
        first = batch_size if limit is None else min(batch_size, limit - seen)
        with Session(engine) as session:
            page = repository.list_artifacts(
                session,
                first=first,
                after_id=after,
                artifact_type=ArtifactType.CHART.value,
                workflow_id=workflow_id,
                whole_metadata=True,  # the snapshot is what is verified
            )
        yield from page.items
        seen += len(page.items)
        if not page.has_next or not page.items:
            return
        after = page.items[-1].id


def count_charts(engine: Engine, *, workflow_id: str | None) -> int:
    """How many chart artifacts a run will look at (for the progress bar)."""
    with Session(engine) as session:
        return repository.count_artifacts(
            session, artifact_type=ArtifactType.CHART.value, workflow_id=workflow_id
        )


def verify_charts(
    *,
    engine: Engine,
    client: Minio,
    settings: Settings,
    metrics: Metrics,
    limit: int | None = None,
    workflow_id: str | None = None,
    on_result: Callable[[Verification], None] | None = None,
) -> list[Verification]:
    """Verify chart artifacts in id order; every verdict is logged and counted."""
    results: list[Verification] = []
    for row in chart_rows(engine, limit=limit, workflow_id=workflow_id):
        result = verify_row(row, client=client, settings=settings)
        metrics.chart_verifications.labels(result.outcome.value).inc()
        log.info(
            "chart.verified",
            artifact_id=result.artifact_id,
            outcome=result.outcome.value,
            detail=result.detail,
            pixel_ratio=result.pixel_ratio,
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
