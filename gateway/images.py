"""The image service behind `/api/artifacts/{id}/image`: cache -> MinIO -> regenerate -> 404.

Bytes sit in an LRU bounded in bytes, keyed by artifact id plus a fingerprint of what they
depend on (the MinIO object's ETag, or the snapshot hash + chartkit version + spec). The ETag
served is derived from that fingerprint, so a matching If-None-Match is answered without
fetching or rendering. Concurrent misses for one chart share a single fetch or render; renders
run in a bounded thread pool with a timeout and a bounded queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
import structlog
from cachetools import LRUCache, TTLCache
from minio import Minio

import chartkit
from chartkit import ChartSpec, SnapshotError, count_bars
from gateway.errors import (
    NotFoundError,
    OverloadedError,
    RenderTimeoutError,
    SnapshotUnusableError,
)
from gateway.models import Artifact, ArtifactType
from gateway.objectstore import (
    FetchedObject,
    FetchFailure,
    ObjectLocation,
    SocketRegistry,
    UrlRefusal,
    fetch_png,
    make_client,
    object_etag,
    parse_minio_url,
)
from gateway.observability import Metrics
from gateway.rows import SpecChoice, SpecOrigin, chart_spec_for, minio_url_of, snapshot_of
from gateway.settings import Settings

log = structlog.get_logger("gateway.images")
Source = Literal["auto", "minio", "regenerated"]
# How long the gateway trusts what it learnt about an object (its ETag, or that it is missing)
# before asking MinIO again. Cache-Control max-age matches it.
REVALIDATE_S = 30.0


@dataclass(frozen=True, slots=True)
class ChartImage:
    """Bytes to serve and the headers that describe them."""

    data: bytes
    etag: str
    source: Literal["minio", "regenerated"]
    cache_hit: bool
    # Regenerated charts only: whether the recorded spec was used (X-Chart-Spec).
    spec_origin: SpecOrigin | None = None


def render_fingerprint(snapshot: Any, spec: ChartSpec) -> str:
    """Hash of everything a regenerated chart's bytes depend on."""
    payload = json.dumps(
        [snapshot, spec.to_dict(), chartkit.__version__],
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ImageService:
    """Serves chart PNGs for artifacts; one per app, shared by all requests."""

    def __init__(self, *, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self._sockets = SocketRegistry()
        self.client: Minio | None = make_client(settings, registry=self._sockets)
        self.metrics = metrics
        self._cache: LRUCache[tuple[Any, ...], bytes] = LRUCache(
            maxsize=max(settings.image_cache_mb, 1) * 1024 * 1024, getsizeof=len
        )
        self._cache_lock = threading.Lock()
        # artifact id + url -> object ETag, or a FetchFailure seen recently.
        self._object_memo: TTLCache[tuple[int, str], str | FetchFailure] = TTLCache(
            maxsize=100_000, ttl=REVALIDATE_S
        )
        self._inflight: dict[tuple[Any, ...], asyncio.Future[bytes]] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=settings.render_concurrency, thread_name_prefix="render"
        )
        # Renders waiting or running; past this, new renders get 503 instead of queueing. A
        # queued render still answers within render_timeout_s (waiting time counts), so a deep
        # queue cannot hold a request longer than one render deadline.
        self._render_slots = asyncio.Semaphore(max(settings.render_queue, 1))

    def close(self) -> None:
        """Stop the render pool (running renders finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- cache ------------------------------------------------------------------------------
    def _cached(self, key: tuple[Any, ...]) -> bytes | None:
        with self._cache_lock:
            return self._cache.get(key)

    def _store(self, key: tuple[Any, ...], data: bytes) -> None:
        if len(data) <= self._cache.maxsize:
            with self._cache_lock:
                self._cache[key] = data

    async def _single_flight(self, key: tuple[Any, ...], produce: Any) -> tuple[bytes, bool]:
        """Bytes for `key` from cache, from a producer already running, or by producing them."""
        cached = self._cached(key)
        if cached is not None:
            return cached, True
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running), False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            data = await produce()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        else:
            future.set_result(data)
            self._store(key, data)
            return data, False
        finally:
            del self._inflight[key]

    # -- planning ---------------------------------------------------------------------------
    def _location(self, row: Artifact) -> ObjectLocation | UrlRefusal:
        url = minio_url_of(row)
        if url is None:
            return UrlRefusal("artifact has no minio_url")
        return parse_minio_url(url, self.settings)

    def spec_for(self, row: Artifact) -> SpecChoice:
        """The spec a regenerated chart of this row is drawn with (bars capped by settings)."""
        choice = chart_spec_for(row)
        if choice.spec.max_bars <= self.settings.max_bars:
            return choice
        capped = ChartSpec.from_dict({**choice.spec.to_dict(), "max_bars": self.settings.max_bars})
        return SpecChoice(capped, choice.origin, choice.problem)

    def etag_if_known(self, row: Artifact, source: Source) -> str | None:
        """The ETag a response would carry, when it is known without I/O (for 304s)."""
        assert row.id is not None
        if source != "regenerated" and self.client is not None:
            location = self._location(row)
            if isinstance(location, ObjectLocation):
                memo = self._object_memo.get((row.id, f"{location.bucket}/{location.key}"))
                if isinstance(memo, str):
                    return _minio_etag(memo)
                if memo is None:
                    return None  # MinIO must be asked first
        if source == "minio":
            return None
        snapshot = snapshot_of(row)
        bars = count_bars(snapshot)
        if snapshot is None or (bars is not None and bars > self.settings.max_snapshot_bars):
            return None
        return f'"r-{render_fingerprint(snapshot, self.spec_for(row).spec)}"'

    # -- serving ----------------------------------------------------------------------------
    async def image(self, row: Artifact, *, source: Source = "auto") -> ChartImage:
        """The chart for an artifact; raises NotFoundError, SnapshotUnusableError, 503s."""
        assert row.id is not None
        if row.artifact_type != ArtifactType.CHART:
            raise NotFoundError(f"artifact {row.id} is not a chart")
        reason, detail = "not_configured", "MINIO_ENDPOINT is not set"
        if source != "regenerated":
            location = self._location(row)
            if isinstance(location, UrlRefusal):
                reason, detail = (
                    ("url_refused", location.reason)
                    if minio_url_of(row)
                    else ("object_missing", location.reason)
                )
            elif self.client is not None:
                served = await self._from_minio(row, location)
                if isinstance(served, ChartImage):
                    return served
                reason, detail = served.reason, served.detail
            if source == "minio":
                self._unavailable(row, reason, detail)
                raise NotFoundError(f"stored chart unavailable ({reason}): {detail}")
            self.metrics.chart_fallbacks.labels(reason).inc()
            log.info("chart.fallback", artifact_id=row.id, reason=reason, detail=detail)
        return await self._regenerate(
            row, fallback_reason=None if source == "regenerated" else reason
        )

    async def _from_minio(
        self, row: Artifact, location: ObjectLocation
    ) -> ChartImage | FetchFailure:
        assert row.id is not None
        assert self.client is not None
        memo_key = (row.id, f"{location.bucket}/{location.key}")
        memo = self._object_memo.get(memo_key)
        if isinstance(memo, FetchFailure):
            return memo
        if memo is None:
            etag = await self._run_io(object_etag, self.client, location)
            if isinstance(etag, FetchFailure):
                self._object_memo[memo_key] = etag
                return etag
            memo = etag
        key = (row.id, "minio", location, memo)

        async def produce() -> bytes:
            started = time.perf_counter()
            result = await self._run_io(
                fetch_png,
                self.client,
                location,
                max_bytes=self.settings.minio_max_object_bytes,
                deadline_s=self.settings.minio_read_deadline_s,
            )
            self.metrics.minio_fetch_seconds.observe(time.perf_counter() - started)
            if isinstance(result, FetchFailure):
                raise _FetchFailed(result)
            assert isinstance(result, FetchedObject)
            if result.etag != memo:  # replaced between stat and read: key by what we got
                self._object_memo[memo_key] = result.etag
            return result.data

        try:
            data, hit = await self._single_flight(key, produce)
        except _FetchFailed as failed:
            self._object_memo[memo_key] = failed.failure
            return failed.failure
        self._object_memo[memo_key] = memo
        self._count("minio", hit)
        log.info(
            "chart.proxied",
            artifact_id=row.id,
            bucket=location.bucket,
            key=location.key,
            cache="hit" if hit else "miss",
            bytes=len(data),
        )
        return ChartImage(data, _minio_etag(memo), "minio", hit)

    async def _run_io(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = self.settings.minio_read_deadline_s + 1
        worker: list[int] = []

        def call() -> Any:
            worker.append(threading.get_ident())
            try:
                return fn(*args, **kwargs)
            finally:
                self._sockets.forget(worker[0])

        try:
            with anyio.fail_after(deadline):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError:
            if worker:  # free the worker thread too, not just this request
                self._sockets.cut(worker[0])
            return FetchFailure("timeout", f"MinIO did not answer within {deadline} s")

    async def _regenerate(self, row: Artifact, *, fallback_reason: str | None) -> ChartImage:
        assert row.id is not None
        snapshot = snapshot_of(row)
        if snapshot is None:
            self._unavailable(row, fallback_reason or "no_snapshot", "no market_data_snapshot")
            raise NotFoundError(
                f"artifact {row.id} has no stored chart and no snapshot to regenerate it from"
            )
        bars = count_bars(snapshot)
        if bars is not None and bars > self.settings.max_snapshot_bars:
            # Refused before hashing or parsing: a million bars would hold a worker for seconds.
            detail = (
                f"snapshot has {bars} bars; at most {self.settings.max_snapshot_bars} are drawn"
            )
            self._unavailable(row, "snapshot_too_large", detail)
            raise SnapshotUnusableError(f"stored snapshot cannot be drawn: {detail}")
        choice = self.spec_for(row)
        if choice.problem is not None:
            log.info("chart.spec_refused", artifact_id=row.id, reason=choice.problem)
        fingerprint = render_fingerprint(snapshot, choice.spec)
        key = (row.id, "regenerated", fingerprint)

        async def produce() -> bytes:
            return await self._render(snapshot, choice.spec)

        try:
            data, hit = await self._single_flight(key, produce)
        except SnapshotError as exc:
            self._unavailable(row, "bad_snapshot", str(exc))
            raise SnapshotUnusableError(f"stored snapshot cannot be drawn: {exc}") from None
        self._count("regenerated", hit)
        log.info(
            "chart.regenerated",
            artifact_id=row.id,
            cache="hit" if hit else "miss",
            fallback_reason=fallback_reason,
            bytes=len(data),
        )
        return ChartImage(data, f'"r-{fingerprint}"', "regenerated", hit, choice.origin)

    async def _render(self, snapshot: Any, spec: ChartSpec) -> bytes:
        if self._render_slots.locked():
            raise OverloadedError("too many charts are being rendered; retry shortly")
        async with self._render_slots:
            started = time.perf_counter()
            future = self._pool.submit(
                chartkit.render_chart,
                snapshot,
                spec,
                max_snapshot_bars=self.settings.max_snapshot_bars,
            )
            try:
                data = await asyncio.wait_for(
                    asyncio.wrap_future(future), timeout=self.settings.render_timeout_s
                )
            except TimeoutError:
                future.cancel()
                raise RenderTimeoutError("chart rendering timed out") from None
            finally:
                self.metrics.chart_render_seconds.observe(time.perf_counter() - started)
            return data

    def _count(self, source: str, hit: bool) -> None:
        self.metrics.chart_responses.labels(source, "hit" if hit else "miss").inc()

    def _unavailable(self, row: Artifact, reason: str, detail: str) -> None:
        log.info("chart.unavailable", artifact_id=row.id, reason=reason, detail=detail)


def _minio_etag(object_etag: str) -> str:
    return f'"m-{hashlib.sha256(object_etag.encode()).hexdigest()[:24]}"'


class _FetchFailed(Exception):
    def __init__(self, failure: FetchFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure
