"""The services layer: what the lifespan builds once, and the request-level operations on it.

Delivery modules (REST routes, GraphQL, pages, CLI) call down into here; nothing here knows
about HTTP. `Services` is the container; `load_artifact` and `parse_artifact_id` are the one way
a path id becomes a row; `RequestLineage` batches one request's lineage lookups.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader

from gateway import repository, tracing
from gateway.answers import AnswerCache
from gateway.breaker import CircuitBreaker
from gateway.db import init_db, make_engine
from gateway.errors import InvalidInputError, NotFoundError
from gateway.images import ImageService
from gateway.lineage import Key, Lineage, Outcome, resolve_row
from gateway.mlflow_backend import make_backend
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.resolver import LineageResolver, ResolutionRecorder
from gateway.restricted import StoredMetadata, StoredMetadataMemo, read_metadata_text
from gateway.rows import snapshot_of
from gateway.runs import RunCatalog
from gateway.settings import Settings
from gateway.sharedstore import SharedStore
from gateway.snapshots import SnapshotSummary, summarize_metadata_text, summarize_snapshot
from gateway.strictjson import EncodedJSON, UnreadableJSON
from gateway.workers import WorkerPool, start_forkserver_soon

log = structlog.get_logger("gateway")

# Ids are BIGINT on PostgreSQL: anything larger is malformed, not merely absent.
MAX_ID = 2**63 - 1
# Matched against the whole string: "12\n" is not artifact 12.
_DIGITS = re.compile(r"[0-9]{1,19}")
CPU_THREADS = 2
# Worker processes that parse snapshots for summaries (renders have a pool of their own).
PARSE_WORKERS = 2


@dataclass
class Services:
    """What the lifespan builds once and every route, resolver and page shares."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    resolver: LineageResolver
    images: ImageService
    # Threads for hashing snapshots: apart from database reads, and few.
    cpu_limiter: anyio.CapacityLimiter
    # Worker processes for snapshot summaries: parsing never holds the serving process's GIL.
    parser: WorkerPool
    # Recent answers to reads, served again for GATEWAY_ANSWER_CACHE_S.
    answers: AnswerCache
    # Run details and workflow runs, cached, fetched through the resolver.
    runs: RunCatalog
    # Redis shared by replicas (GATEWAY_REDIS_URL), None when unset.
    shared: SharedStore | None = None
    # Stored metadata texts read (strict JSON, lean value), by the text: each one read once.
    stored_metadata: StoredMetadataMemo = field(default_factory=StoredMetadataMemo)


@asynccontextmanager
async def open_services(settings: Settings, metrics: Metrics) -> AsyncIterator[Services]:
    """Build the engine, lineage resolver and image service; close them on the way out."""
    engine = make_engine(settings.database_url)
    if tracing.enabled():
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # Its declared range stops below SQLAlchemy 2.1, whose event API it uses unchanged
        # (tests/gateway/test_tracing.py checks the query spans). Once per process.
        SQLAlchemyInstrumentor().instrument(engine=engine, skip_dep_check=True)
    try:
        await anyio.to_thread.run_sync(init_db, engine)
    except SQLAlchemyError as exc:
        # Serve anyway: /readyz says 503 until the database comes back.
        log.warning("db.unavailable_at_startup", error=str(exc).splitlines()[0])
    shared = build_shared_store(settings, metrics)
    resolver = build_resolver(settings, metrics, shared=shared)
    resolver.start_warm_up(budget_s=settings.mlflow_warmup_s)
    cpu_limiter = anyio.CapacityLimiter(CPU_THREADS)
    images = ImageService(
        settings=settings, metrics=metrics, cpu_limiter=cpu_limiter, shared=shared
    )
    parser = WorkerPool(workers=PARSE_WORKERS)
    start_forkserver_soon()
    problem = settings.admin_token_problem()
    if problem is not None and settings.admin_token is not None:
        log.warning("gateway.admin_token_refused", reason=problem)
    try:
        yield Services(
            settings=settings,
            engine=engine,
            metrics=metrics,
            resolver=resolver,
            images=images,
            cpu_limiter=cpu_limiter,
            parser=parser,
            answers=AnswerCache(ttl_s=settings.answer_cache_s),
            runs=RunCatalog(resolver, ui_url=settings.mlflow_ui_base),
            shared=shared,
        )
    finally:
        resolver.stop_warm_up()
        images.close()
        parser.close()
        await resolver.backend.aclose()
        if shared is not None:
            await shared.aclose()
        engine.dispose()


def services_of(connection: HTTPConnection) -> Services:
    """The app's shared services, put in request state by the lifespan."""
    services: Services = connection.state.services
    return services


def build_shared_store(settings: Settings, metrics: Metrics) -> SharedStore | None:
    """Redis shared by replicas, when GATEWAY_REDIS_URL is set (no connection is made yet)."""
    if settings.redis_url is None:
        return None
    return SharedStore(
        url=settings.redis_url.get_secret_value(),
        prefix=settings.redis_prefix,
        timeout_s=settings.redis_timeout_s,
        metrics=metrics,
        max_chart_bytes=settings.redis_max_chart_mb * 1024 * 1024,
        signing_key=settings.redis_signing_secret,
    )


def build_resolver(
    settings: Settings, metrics: Metrics, *, shared: SharedStore | None = None
) -> LineageResolver:
    """The process-wide lineage resolver configured from settings."""
    return LineageResolver(
        make_backend(
            settings.mlflow_tracking_uri,
            timeout_s=settings.mlflow_timeout_s,
            traced=tracing.enabled(),
        ),
        metrics=metrics,
        timeout_s=settings.mlflow_timeout_s,
        concurrency=settings.mlflow_concurrency,
        hit_ttl_s=settings.lineage_cache_ttl_s,
        miss_ttl_s=settings.lineage_miss_ttl_s,
        breaker=CircuitBreaker(
            threshold=settings.mlflow_breaker_threshold,
            cooldown_s=settings.mlflow_breaker_cooldown_s,
        ),
        shared=shared,
    )


def parse_artifact_id(raw: str) -> int:
    """A positive artifact id from a path segment; InvalidInputError otherwise."""
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_ID:
        raise InvalidInputError(f"artifact id must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def check_artifact_id(value: int, *, name: str = "id") -> int:
    """An id given as an integer argument (GraphQL) within the table's range."""
    if not 1 <= value <= MAX_ID:
        raise InvalidInputError(f"{name} must be a positive integer")
    return value


async def load_artifact(services: Services, raw_id: str | int) -> Artifact:
    """The row for a path id: InvalidInputError when malformed, NotFoundError when absent."""
    artifact_id = raw_id if isinstance(raw_id, int) else parse_artifact_id(raw_id)
    row = await repository.run_in_session(
        services.engine, repository.get_artifact, artifact_id=artifact_id
    )
    if row is None:
        raise NotFoundError(f"artifact {artifact_id} does not exist")
    return row


async def load_listed_artifact(
    services: Services, artifact_id: int
) -> tuple[Artifact, repository.Listed]:
    """The row without its snapshot, and what its stored metadata costs; NotFoundError when
    absent. For paths that need the snapshot only sometimes (GraphQL, the image route)."""
    page = await repository.run_in_session(
        services.engine, repository.get_listed_artifact, artifact_id=artifact_id
    )
    if not page.items:
        raise NotFoundError(f"artifact {artifact_id} does not exist")
    row = page.items[0]
    listing = page.listing_of(row)
    assert listing is not None  # a listed page knows every row it holds
    return row, listing


async def load_artifact_document(
    services: Services, artifact_id: int
) -> tuple[Artifact, EncodedJSON | UnreadableJSON | None]:
    """The row without its snapshot and its whole stored metadata made strict JSON, to be
    spliced into an answer undecoded; NotFoundError when absent. For answers that serve the
    metadata whole (the REST document)."""
    found = await repository.run_in_session(
        services.engine, repository.get_artifact_document, artifact_id=artifact_id
    )
    if found is None:
        raise NotFoundError(f"artifact {artifact_id} does not exist")
    row, text = found
    if text is None:
        return row, None
    stored = await read_stored_metadata(services, text)
    repository.set_loaded_metadata(row, stored.lean)
    return row, stored.whole


async def snapshot_summary(services: Services, row: Artifact) -> SnapshotSummary | None:
    """The row's snapshot summary, parsed in a worker process (never on the event loop, never
    in a thread of the serving process); a cancelled request stops the parse it started."""
    snapshot = snapshot_of(row)
    if snapshot is None:
        return None
    return await services.parser.run(
        summarize_snapshot, snapshot, max_bars=services.settings.max_snapshot_bars
    )


async def snapshot_summary_of_text(
    services: Services, metadata_text: str | None
) -> SnapshotSummary | None:
    """The summary of the snapshot in a row's stored metadata text, decoded and parsed in a
    worker process: the serving process only moves the text."""
    if metadata_text is None:
        return None
    return await services.parser.run(
        summarize_metadata_text, metadata_text, max_bars=services.settings.max_snapshot_bars
    )


async def metadata_for_response(
    services: Services, metadata_text: str | None
) -> EncodedJSON | UnreadableJSON | None:
    """Stored metadata text made strict JSON, to be spliced into a response as is (the serving
    process neither decodes nor re-encodes it)."""
    if metadata_text is None:
        return None
    return (await read_stored_metadata(services, metadata_text)).whole


async def read_stored_metadata(services: Services, metadata_text: str) -> StoredMetadata:
    """A stored metadata text read in a worker process, or as this process read it before
    (equal text, equal reading: `services.stored_metadata`)."""
    stored = services.stored_metadata.get(metadata_text)
    if stored is None:
        try:
            stored = await services.parser.run(read_metadata_text, metadata_text)
        except Exception as exc:  # the worker died (pebble.ProcessExpired) or failed
            # The field answers null with the reason; the rest of the row is served. Not kept:
            # the next read tries again.
            log.warning("metadata.unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
            return StoredMetadata(UnreadableJSON("metadata could not be read just now"), None)
        services.stored_metadata.keep(metadata_text, stored)
    return stored


class RequestLineage:
    """One request's view of lineage: lookups batched by a DataLoader, each row resolved once."""

    def __init__(self, resolver: LineageResolver) -> None:
        self.resolver = resolver
        self._loader: DataLoader[Key, Outcome] = DataLoader(load_fn=resolver.load_batch)
        self._memo: dict[int, asyncio.Future[Lineage]] = {}

    @functools.cached_property
    def _record(self) -> ResolutionRecorder:
        # Made at the first resolution: most requests (a page of names, a run, a kept answer)
        # resolve none, and binding a logger costs each of them 6 us.
        return self.resolver.recorder()

    def of(self, row: Artifact) -> asyncio.Future[Lineage]:
        """The row's lineage; several fields of one artifact share a single resolution.

        Decided by what the resolver keeps (stored ids, a warm cache), it is answered at once:
        a task and a DataLoader batch per row cost more than the decision itself.
        """
        key = row.id if row.id is not None else id(row)
        resolution = self._memo.get(key)
        if resolution is None:
            kept = self.resolver.resolve_kept(row)
            if kept is None:
                resolution = asyncio.ensure_future(self._resolve(row))
            else:
                self._record(row, kept)
                resolution = asyncio.get_running_loop().create_future()
                resolution.set_result(kept)
            self._memo[key] = resolution
        return resolution

    async def _resolve(self, row: Artifact) -> Lineage:
        lineage = await resolve_row(row, self._loader.load)
        self._record(row, lineage)
        return lineage
