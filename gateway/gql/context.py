"""The typed per-request GraphQL context built by the app's `get_context`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from gateway.models import Artifact
from gateway.rows import snapshot_of
from gateway.services import RequestLineage, Services
from gateway.snapshots import SnapshotSummary, summarize_snapshot


@dataclass
class Context:
    """What resolvers may use: the shared services plus this request's lineage batching."""

    request: Request
    response: Response | None
    services: Services
    lineage: RequestLineage
    _summaries: dict[int, asyncio.Task[SnapshotSummary | None]] = field(default_factory=dict)

    def snapshot_summary(self, row: Artifact) -> asyncio.Task[SnapshotSummary | None]:
        """The row's snapshot summary, parsed at most once per request however many aliases ask
        (in a worker thread: parsing is CPU work and must not hold the event loop)."""
        key = row.id if row.id is not None else id(row)
        task = self._summaries.get(key)
        if task is None:
            max_bars = self.services.settings.max_snapshot_bars
            snapshot = snapshot_of(row)
            task = asyncio.ensure_future(
                anyio.to_thread.run_sync(lambda: summarize_snapshot(snapshot, max_bars=max_bars))
            )
            self._summaries[key] = task
        return task
