"""The typed per-request GraphQL context built by the app's `get_context`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from strawberry.dataloader import DataLoader

from gateway import repository
from gateway.errors import ResponseTooLargeError
from gateway.models import Artifact
from gateway.repository import Listed
from gateway.run_graph import RequestRuns
from gateway.services import (
    RequestLineage,
    Services,
    metadata_for_response,
    snapshot_summary,
    snapshot_summary_of_text,
)
from gateway.snapshots import SnapshotSummary

# Rows whose stored metadata text one query reads when listed rows ask for it (a 20,000-bar
# snapshot is 2.4 MB of text: a few at a time, not a whole page at once).
TEXT_BATCH = 8


def _batched(
    services: Services, read: Callable[..., dict[int, Any]]
) -> Callable[[list[int]], Awaitable[list[Any]]]:
    async def load(ids: list[int]) -> list[Any]:
        found = await repository.run_in_session(services.engine, read, ids=ids)
        return [found.get(artifact_id) for artifact_id in ids]

    return load


@dataclass
class Context:
    """What resolvers may use: the shared services plus this request's lineage batching."""

    request: Request
    response: Response | None
    services: Services
    lineage: RequestLineage
    _summaries: dict[int, asyncio.Future[SnapshotSummary | None]] = field(default_factory=dict)
    _metadata_chars: int = 0
    _metadata_texts: DataLoader[int, str | None] = field(init=False)
    # This request's run details, batched.
    runs: RequestRuns = field(init=False)

    def __post_init__(self) -> None:
        self.runs = RequestRuns(self.services.runs)
        self._metadata_texts = DataLoader(
            load_fn=_batched(self.services, repository.metadata_texts), max_batch_size=TEXT_BATCH
        )

    async def whole_metadata(self, row: Artifact, listed: Listed | None) -> Any:
        """A row's whole stored metadata. A row read whole has it decoded already; for a listed
        row it is read now as text (batched) and made strict JSON in a worker process, to be
        spliced into the response undecoded (`EncodedJSON`), unless the metadata already asked
        for would not fit the response."""
        if listed is None or row.id is None:
            return row.meta
        self._metadata_chars += listed.metadata_chars or 0
        limit = self.services.settings.max_response_mb * 1024 * 1024
        if self._metadata_chars > limit:
            raise ResponseTooLargeError(
                f"the metadata asked for adds up to more than GATEWAY_MAX_RESPONSE_MB "
                f"({self.services.settings.max_response_mb} MB): ask for fewer rows"
            )
        text = await self._metadata_texts.load(row.id)
        return await metadata_for_response(self.services, text)

    async def snapshot_summary(
        self, row: Artifact, listed: Listed | None
    ) -> SnapshotSummary | None:
        """The row's snapshot summary, parsed at most once per request however many aliases ask.

        Awaited in the asking resolver's own task: when the request is cancelled (deadline,
        client gone), the parse it started is stopped and no other starts.
        """
        key = row.id if row.id is not None else id(row)
        pending = self._summaries.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._summaries[key] = pending
        try:
            if listed is None or row.id is None:
                summary = await snapshot_summary(self.services, row)
            else:
                text = await self._metadata_texts.load(row.id)
                summary = await snapshot_summary_of_text(self.services, text)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the other aliases re-raise it
            raise
        pending.set_result(summary)
        return summary
