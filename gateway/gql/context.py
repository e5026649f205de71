"""The typed per-request GraphQL context built by the app's `get_context`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from gateway.models import Artifact
from gateway.services import RequestLineage, Services, snapshot_summary
from gateway.snapshots import SnapshotSummary


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

        Awaited in the asking resolver's own task: when the request is cancelled (deadline,
        client gone), no parse that has not started yet starts.
        """
        key = row.id if row.id is not None else id(row)
        pending = self._summaries.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._summaries[key] = pending
        try:
            summary = await snapshot_summary(self.services, row)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the other aliases re-raise it
            raise
        pending.set_result(summary)
        return summary
