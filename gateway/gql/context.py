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
    _summaries: dict[int, asyncio.Future[SnapshotSummary | None]] = field(default_factory=dict)

    async def snapshot_summary(self, row: Artifact) -> SnapshotSummary | None:
        """The row's snapshot summary, parsed at most once per request however many aliases ask.

        Parsed in a worker thread of the CPU pool (never on the event loop, never in the pool
        of database reads), awaited in the asking resolver's own task: when the request is
        cancelled (deadline, client gone), no parse that has not started yet starts.
        """
        key = row.id if row.id is not None else id(row)
        pending = self._summaries.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._summaries[key] = pending
        max_bars = self.services.settings.max_snapshot_bars
        snapshot = snapshot_of(row)
        try:
            summary = await anyio.to_thread.run_sync(
                lambda: summarize_snapshot(snapshot, max_bars=max_bars),
                abandon_on_cancel=True,
                limiter=self.services.cpu_limiter,
            )
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the other aliases re-raise it
            raise
        pending.set_result(summary)
        return summary
