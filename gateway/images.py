"""The image policy behind `/api/artifacts/{id}/image`: cache -> MinIO -> regenerate -> 404.

Which source serves a chart, why it fell back, and what its ETag is. The parts it composes each
have one job: `bytecache.ByteCache` (bytes bounded in size, single flight for concurrent misses),
`objectstore.ObjectReader` (MinIO reads within a deadline), `renderer.Renderer` (renders off the
loop, bounded queue, timeout).

Bytes are keyed by artifact id plus a fingerprint of what they depend on (the MinIO object's
ETag, or the snapshot hash + chartkit version + spec). The ETag served is derived from that
fingerprint, so a matching If-None-Match is answered without fetching or rendering.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import structlog
from cachetools import LRUCache, TTLCache

import chartkit
from chartkit import ChartSpec, SnapshotError, count_bars
from gateway import tracing
from gateway.bytecache import ByteCache, SingleFlight
from gateway.errors import (
    GatewayError,
    NotFoundError,
    RenderTimeoutError,
    SnapshotUnusableError,
)
from gateway.minio_urls import ObjectLocation, UrlRefusal, parse_minio_url
from gateway.models import Artifact, ArtifactType
from gateway.objectstore import FetchedObject, FetchFailure, make_reader
from gateway.observability import Metrics
from gateway.renderer import Renderer
from gateway.repository import Listed
from gateway.rows import SpecChoice, SpecOrigin, chart_spec_for, minio_url_of, snapshot_of
from gateway.settings import Settings
from gateway.sharedflight import SharedFlight, SharedWaitTimeout
from gateway.sharedstore import SharedStore

log = structlog.get_logger("gateway.images")
Source = Literal["auto", "minio", "regenerated"]
# How long the gateway trusts what it learnt about an object (its ETag, or that it is missing)
# before asking MinIO again. Cache-Control max-age matches it.
REVALIDATE_S = 30.0
# Snapshots up to this many bars are hashed on the event loop (about a millisecond); larger
# ones in a worker thread.
ON_LOOP_FINGERPRINT_BARS = 2000
CacheKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ChartImage:
    """Bytes to serve and the headers that describe them."""

    data: bytes
    etag: str
    source: Literal["minio", "regenerated"]
    cache_hit: bool
    # Regenerated charts only: whether the recorded spec was used (X-Chart-Spec).
    spec_origin: SpecOrigin | None = None
    # Where the bytes are kept in the in-process cache.
    cache_key: CacheKey | None = None


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

    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        cpu_limiter: anyio.CapacityLimiter | None = None,
        shared: SharedStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        # Redis behind the in-process tiers (None: this process only).
        self.shared = shared
        self._shared_charts: SharedFlight[bytes] | None = None
        self._shared_objects: SharedFlight[FetchedObject | FetchFailure] | None = None
        if shared is not None:
            self._shared_charts = SharedFlight(shared, metrics=metrics, tier="chart")
            self._shared_objects = SharedFlight(shared, metrics=metrics, tier="object")
        self.metrics = metrics
        self.cpu_limiter = cpu_limiter
        self.reader = make_reader(settings)
        self.renderer = Renderer(settings=settings, metrics=metrics)
        self.cache: ByteCache[CacheKey] = ByteCache(max_bytes=settings.image_cache_mb * 1024 * 1024)
        # fingerprint -> why its render failed or timed out, for a short while (negative cache).
        self._render_failures: TTLCache[str, GatewayError] = TTLCache(
            maxsize=10_000, ttl=settings.render_failure_ttl_s, timer=clock
        )
        # artifact id + url -> object ETag, or a FetchFailure seen recently.
        self._object_memo: TTLCache[tuple[int, str], str | FetchFailure] = TTLCache(
            maxsize=100_000, ttl=REVALIDATE_S, timer=clock
        )
        # A row read without its snapshot (id, stored metadata size, spec) -> the fingerprint its
        # snapshot had, for 30 s: 304s and cached charts need neither the snapshot nor a hash.
        self._fingerprints: TTLCache[CacheKey, str] = TTLCache(
            maxsize=100_000, ttl=REVALIDATE_S, timer=clock
        )
        # artifact id + source -> the chart last served (bytes left out), for 30 s.
        self._served: TTLCache[tuple[int, str], ChartImage] = TTLCache(
            maxsize=100_000, ttl=REVALIDATE_S, timer=clock
        )
        # artifact id + url -> the ETag last served, kept past the 30 s: when its bytes are still
        # cached, a `stat` revalidates them instead of a GET.
        self._last_etags: LRUCache[tuple[int, str], str] = LRUCache(maxsize=100_000)
        self._fetches: SingleFlight[tuple[int, str], FetchedObject | FetchFailure] = SingleFlight()

    def close(self) -> None:
        """Stop the render workers (running renders are abandoned) and the MinIO reads."""
        self.renderer.close()
        if self.reader is not None:
            self.reader.close()

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

    async def _fingerprint(self, snapshot: Any, spec: ChartSpec, bars: int | None) -> str:
        # Hashing a large snapshot (a JSON dump of every bar) is CPU work: off the event loop.
        if bars is not None and bars <= ON_LOOP_FINGERPRINT_BARS:
            return render_fingerprint(snapshot, spec)
        return await anyio.to_thread.run_sync(
            render_fingerprint, snapshot, spec, limiter=self.cpu_limiter
        )

    async def etag_if_known(
        self, row: Artifact, source: Source, *, listing: Listed | None = None
    ) -> str | None:
        """The ETag a response would carry, when it is known without I/O (for 304s). A row read
        without its snapshot (`listing` set) is answered from what was learnt in the last 30 s."""
        assert row.id is not None
        if source != "regenerated" and self.reader is not None:
            location = self._location(row)
            if isinstance(location, ObjectLocation):
                memo = self._object_memo.get((row.id, f"{location.bucket}/{location.key}"))
                if isinstance(memo, str):
                    return _minio_etag(memo)
                if memo is None:
                    return None  # MinIO must be asked first
        if source == "minio":
            return None
        if listing is not None:
            known = self._fingerprints.get(self._fingerprint_key(row, listing))
            return f'"r-{known}"' if known is not None else None
        snapshot = snapshot_of(row)
        bars = count_bars(snapshot)
        if snapshot is None or (bars is not None and bars > self.settings.max_snapshot_bars):
            return None
        return f'"r-{await self._fingerprint(snapshot, self.spec_for(row).spec, bars)}"'

    def _fingerprint_key(self, row: Artifact, listing: Listed) -> CacheKey:
        spec = self.spec_for(row)
        return (row.id, listing.metadata_chars, json.dumps(spec.spec.to_dict(), sort_keys=True))

    # -- serving ----------------------------------------------------------------------------
    def recently_served(self, artifact_id: int, source: Source) -> ChartImage | None:
        """The chart served for this artifact and source in the last 30 s, while its bytes are
        still cached: served again without reading the row, as any cache may do for 30 s
        (`Cache-Control: max-age=30`). None otherwise."""
        served = self._served.get((artifact_id, source))
        if served is None or served.cache_key is None:
            return None
        data = self.cache.get(served.cache_key)
        if data is None:
            return None
        self._count(served.source, True)
        return dataclasses.replace(served, data=data, cache_hit=True)

    async def image(
        self,
        row: Artifact,
        *,
        source: Source = "auto",
        listing: Listed | None = None,
        whole: Callable[[], Awaitable[Artifact]] | None = None,
    ) -> ChartImage:
        """The chart for an artifact; raises NotFoundError, SnapshotUnusableError, 503s.

        `row` may be read without its snapshot (`listing` set, `whole` reads the full row): the
        snapshot is then read only to draw or hash it, never for a cached chart.
        """
        assert row.id is not None
        tracing.set_attributes(**{"artifact.id": row.id, "chart.requested_source": source})
        image = await self._image(row, source=source, listing=listing, whole=whole)
        tracing.set_attributes(**{"chart.source": image.source, "chart.cache_hit": image.cache_hit})
        # Remembered without its bytes (those stay in the byte-bounded cache only).
        self._served[(row.id, source)] = dataclasses.replace(image, data=b"")
        return image

    async def _image(
        self,
        row: Artifact,
        *,
        source: Source,
        listing: Listed | None,
        whole: Callable[[], Awaitable[Artifact]] | None,
    ) -> ChartImage:
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
            elif self.reader is not None:
                served = await self._from_minio(row, location)
                if isinstance(served, ChartImage):
                    return served
                reason, detail = served.reason, served.detail
            if source == "minio":
                # The client is told the reason (the gateway's word); the detail, which can
                # quote the object store's client (hosts, ports, paths), is logged only.
                self._unavailable(row, reason, detail)
                raise NotFoundError(f"stored chart unavailable ({reason})")
            self.metrics.chart_fallbacks.labels(reason).inc()
            log.info("chart.fallback", artifact_id=row.id, reason=reason, detail=detail)
            tracing.set_attributes(**{"chart.fallback_reason": reason})
        return await self._regenerate(
            row,
            fallback_reason=None if source == "regenerated" else reason,
            listing=listing,
            whole=whole,
        )

    async def _from_minio(
        self, row: Artifact, location: ObjectLocation
    ) -> ChartImage | FetchFailure:
        """The stored PNG. Within 30 s of the last look: the cache, no round trip. After that,
        one round trip: a `stat` when the bytes of the ETag last seen are still cached (is it
        the same object?), else the GET itself, whose headers carry the ETag."""
        assert row.id is not None
        assert self.reader is not None
        reader = self.reader
        memo_key = (row.id, f"{location.bucket}/{location.key}")
        memo = self._object_memo.get(memo_key)
        if isinstance(memo, FetchFailure):
            return memo
        if memo is None and self.shared is not None:
            # Another replica looked within the last 30 s: trust it as this replica's own look.
            memo = await self._shared_etag(location)
            if memo is not None:
                self._object_memo[memo_key] = memo
        if memo is None:
            last = self._last_etags.get(memo_key)
            if last is not None and self.cache.get(self._minio_key(row, location, last)):
                etag = await reader.etag(location)
                if isinstance(etag, FetchFailure):
                    self._object_memo[memo_key] = etag
                    return etag
                memo = etag
        if memo is not None:
            cached = self.cache.get(self._minio_key(row, location, memo))
            if cached is not None:
                return self._proxied(row, location, memo_key, cached, memo, hit=True)

        async def get() -> FetchedObject | FetchFailure:
            started = time.perf_counter()
            result = await reader.read_png(location)
            self.metrics.minio_fetch_seconds.observe(time.perf_counter() - started)
            return result

        async def fetch() -> FetchedObject | FetchFailure:
            if self._shared_objects is None:
                return await get()
            try:
                return await self._shared_objects.run(
                    _object_name(location),
                    read=lambda: self._shared_object(location),
                    produce=get,
                    publish=lambda fetched: self._publish_object(location, fetched),
                    wait_s=self.settings.minio_read_deadline_s,
                )
            except SharedWaitTimeout as exc:
                return FetchFailure("timeout", str(exc))

        # Concurrent misses for one object share one GET (whatever its ETag turns out to be),
        # within this process and, with Redis, across replicas.
        fetched, _shared = await self._fetches.run(memo_key, fetch)
        if isinstance(fetched, FetchFailure):
            self._object_memo[memo_key] = fetched
            return fetched
        self.cache.put(self._minio_key(row, location, fetched.etag), fetched.data)
        return self._proxied(row, location, memo_key, fetched.data, fetched.etag, hit=False)

    # -- the shared tier (Redis) --------------------------------------------------------------
    async def _shared_etag(self, location: ObjectLocation) -> str | None:
        assert self.shared is not None
        return await self.shared.get_json(
            self.shared.key("object", _object_name(location)), _checked_etag, kind="object"
        )

    async def _shared_object(self, location: ObjectLocation) -> FetchedObject | None:
        """The object as another replica fetched it in the last 30 s, if its bytes are shared."""
        assert self.shared is not None
        etag = await self._shared_etag(location)
        if etag is None:
            return None
        data = await self.shared.get_png(self.shared.key("chart", _object_name(location, etag)))
        return FetchedObject(data, etag) if data is not None else None

    async def _publish_object(
        self, location: ObjectLocation, fetched: FetchedObject | FetchFailure
    ) -> None:
        assert self.shared is not None
        if isinstance(fetched, FetchFailure):
            return  # failures stay with the replica that saw them
        await self.shared.put_png(
            self.shared.key("chart", _object_name(location, fetched.etag)),
            fetched.data,
            ttl_s=self.settings.redis_chart_ttl_s,
        )
        await self.shared.put_json(
            self.shared.key("object", _object_name(location)),
            {"etag": fetched.etag},
            ttl_s=REVALIDATE_S,
            kind="object",
        )

    async def _render_shared(
        self, fingerprint: str, render: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """A render made once across replicas (with Redis), else here."""
        if self._shared_charts is None or self.shared is None:
            return await render()
        shared = self.shared
        key = shared.key("chart", f"r-{fingerprint}")
        try:
            return await self._shared_charts.run(
                f"r-{fingerprint}",
                read=lambda: shared.get_png(key),
                produce=render,
                publish=lambda data: shared.put_png(
                    key, data, ttl_s=self.settings.redis_chart_ttl_s
                ),
                wait_s=self.settings.render_timeout_s,
            )
        except SharedWaitTimeout:
            raise RenderTimeoutError("chart rendering timed out (on another replica)") from None

    @staticmethod
    def _minio_key(row: Artifact, location: ObjectLocation, etag: str) -> CacheKey:
        return (row.id, "minio", location, etag)

    def _proxied(
        self,
        row: Artifact,
        location: ObjectLocation,
        memo_key: tuple[int, str],
        data: bytes,
        etag: str,
        *,
        hit: bool,
    ) -> ChartImage:
        self._object_memo[memo_key] = etag
        self._last_etags[memo_key] = etag
        self._count("minio", hit)
        log.info(
            "chart.proxied",
            artifact_id=row.id,
            bucket=location.bucket,
            key=location.key,
            cache="hit" if hit else "miss",
            bytes=len(data),
        )
        return ChartImage(
            data, _minio_etag(etag), "minio", hit, cache_key=self._minio_key(row, location, etag)
        )

    async def _regenerate(
        self,
        row: Artifact,
        *,
        fallback_reason: str | None,
        listing: Listed | None = None,
        whole: Callable[[], Awaitable[Artifact]] | None = None,
    ) -> ChartImage:
        assert row.id is not None
        memo_key = self._fingerprint_key(row, listing) if listing is not None else None
        known = self._fingerprints.get(memo_key) if memo_key is not None else None
        if known is not None:
            cached = self.cache.get((row.id, "regenerated", known))
            if cached is not None:
                choice = self.spec_for(row)
                self._count("regenerated", True)
                log.info(
                    "chart.regenerated",
                    artifact_id=row.id,
                    cache="hit",
                    fallback_reason=fallback_reason,
                    bytes=len(cached),
                )
                return ChartImage(
                    cached,
                    f'"r-{known}"',
                    "regenerated",
                    True,
                    choice.origin,
                    cache_key=(row.id, "regenerated", known),
                )
        if listing is not None and whole is not None:
            row = await whole()  # the snapshot is needed: read the row whole
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
        fingerprint = await self._fingerprint(snapshot, choice.spec, bars)
        if memo_key is not None:
            self._fingerprints[memo_key] = fingerprint
        key = (row.id, "regenerated", fingerprint)

        remembered = self._render_failures.get(fingerprint)
        if remembered is not None:
            # A render that just failed or timed out is not retried by every request for it.
            log.info("chart.render_failure_remembered", artifact_id=row.id, error=str(remembered))
            raise remembered

        async def render() -> bytes:
            return await self.renderer.render(snapshot, choice.spec)

        async def produce() -> bytes:
            return await self._render_shared(fingerprint, render)

        try:
            data, hit = await self.cache.get_or_produce(key, produce)
        except SnapshotError as exc:
            self._unavailable(row, "bad_snapshot", str(exc))
            failure = SnapshotUnusableError(f"stored snapshot cannot be drawn: {exc}")
            self._render_failures[fingerprint] = failure
            raise failure from None
        except RenderTimeoutError as exc:
            self._render_failures[fingerprint] = exc
            raise
        self._count("regenerated", hit)
        log.info(
            "chart.regenerated",
            artifact_id=row.id,
            cache="hit" if hit else "miss",
            fallback_reason=fallback_reason,
            bytes=len(data),
        )
        return ChartImage(data, f'"r-{fingerprint}"', "regenerated", hit, choice.origin, key)

    def _count(self, source: str, hit: bool) -> None:
        self.metrics.chart_responses.labels(source, "hit" if hit else "miss").inc()

    def _unavailable(self, row: Artifact, reason: str, detail: str) -> None:
        log.info("chart.unavailable", artifact_id=row.id, reason=reason, detail=detail)


def _object_name(location: ObjectLocation, etag: str | None = None) -> str:
    """A shared key's name for an object (and one of its versions): a digest, so no bucket or
    key text reaches a Redis key."""
    parts = (
        [location.bucket, location.key] if etag is None else [location.bucket, location.key, etag]
    )
    return "m-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def _checked_etag(value: Any) -> str | None:
    """An object's ETag as this gateway shares it, or None for anything else."""
    if not isinstance(value, dict) or set(value) != {"etag"}:
        return None
    etag = value["etag"]
    if isinstance(etag, str) and 0 < len(etag) <= 200 and etag.isprintable():
        return etag
    return None


def _minio_etag(object_etag: str) -> str:
    return f'"m-{hashlib.sha256(object_etag.encode()).hexdigest()[:24]}"'
