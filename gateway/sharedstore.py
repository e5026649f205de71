"""Redis behind the in-process tiers: shared by replicas, optional, untrusted, never in the way.

Every operation has a budget (`GATEWAY_REDIS_TIMEOUT_S`). When one fails (refused, reset, timed
out, or an answer that is not Redis's) the caller is told `RedisUnavailable` and does the work
itself, as a gateway without Redis would. After a failure Redis is skipped for `RETRY_S`, so the
requests meanwhile pay nothing for a Redis that is down; then one operation tries it again, and
sharing resumes by itself when it answers. Each failure is counted by operation
(`gateway_redis_errors_total`); the change of state is logged once each way.

Values are Redis's own structures, written by redis-py: a chart is a hash {png, sha256}, a JSON
document a string, a lease redis-py's `Lock` (a token under a key with a TTL). Nothing read back
is served before it is checked: a chart must start with the PNG signature and hash to its
stored digest; a JSON document must be strict JSON and pass the caller's check. A bad entry is
deleted and counted (`gateway_redis_rejected_total`), never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError, ResponseError

from gateway.observability import Metrics
from gateway.strictjson import RequestJSONError, dumps, loads_request

log = structlog.get_logger("gateway.redis")
T = TypeVar("T")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# After a failure, how long Redis is skipped before one operation tries it again.
RETRY_S = 1.0


class RedisUnavailable(Exception):
    """Redis failed, or is being skipped after a failure: do the work locally."""


class SharedStore:
    """One replica's view of the shared Redis (one per process; redis-py pools connections)."""

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        timeout_s: float,
        metrics: Metrics,
        max_chart_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_chart_bytes = max_chart_bytes
        self._clock = clock
        # No retries inside redis-py: a retry would double the budget; the next request retries.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._available = True
        self._skip_until = 0.0
        self._trial_running = False

    def key(self, *parts: str) -> str:
        """A key in this gateway's namespace."""
        return self.prefix + ":".join(parts)

    @property
    def available(self) -> bool:
        """False from a failure until an operation succeeds again."""
        return self._available

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers now (within the skip after a failure: False, not tried)."""
        try:
            await self._do("ping", lambda redis: redis.ping())
        except RedisUnavailable:
            return False
        return True

    # -- every operation goes through here ---------------------------------------------------
    async def _do(self, operation: str, call: Callable[[Redis], Awaitable[T]]) -> T:
        trial = False
        if not self._available:
            if self._trial_running or self._clock() < self._skip_until:
                raise RedisUnavailable("skipped after a recent failure")
            trial = self._trial_running = True
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call(self._client)
        except (LockError, ResponseError):
            # A lost lease, or a command refused (a key of another type): Redis answered, so
            # it is the caller's news, not Redis failing.
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.redis_errors.labels(operation).inc()
            self._skip_until = self._clock() + RETRY_S
            if self._available:
                self._available = False
                log.warning("redis.unavailable", operation=operation, error=_describe(exc))
            raise RedisUnavailable(_describe(exc)) from None
        finally:
            if trial:
                self._trial_running = False
        if not self._available:
            self._available = True
            log.info("redis.available", operation=operation)
        return result

    async def _drop(self, key: str, kind: str, why: str) -> None:
        self.metrics.redis_rejected.labels(kind).inc()
        log.warning("redis.entry_rejected", key=key, kind=kind, reason=why)
        with contextlib.suppress(RedisUnavailable):
            await self._do("delete", lambda redis: redis.delete(key))

    # -- charts --------------------------------------------------------------------------------
    async def get_png(self, key: str) -> bytes | None:
        """The PNG stored under `key` once checked; None when absent, bad, or Redis is down."""
        try:
            png, digest = await self._do(
                "get_chart", lambda redis: redis.hmget(key, "png", "sha256")
            )
        except RedisUnavailable:
            return None
        except ResponseError:
            await self._drop(key, "chart", "not a hash")
            return None
        if png is None and digest is None:
            return None
        problem = _png_problem(png, digest)
        if problem is not None:
            await self._drop(key, "chart", problem)
            return None
        assert isinstance(png, bytes)
        return png

    async def put_png(self, key: str, data: bytes, *, ttl_s: int) -> None:
        """Keep a PNG for `ttl_s` with its digest (larger than the per-chart cap: not kept)."""
        if len(data) > self.max_chart_bytes:
            return

        async def write(redis: Redis) -> Any:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"png": data, "sha256": hashlib.sha256(data).hexdigest()})
                pipe.expire(key, ttl_s)
                return await pipe.execute()

        with contextlib.suppress(RedisUnavailable, ResponseError):
            await self._do("put_chart", write)

    # -- JSON documents ------------------------------------------------------------------------
    async def get_json(self, key: str, check: Callable[[Any], T | None], *, kind: str) -> T | None:
        """The JSON document under `key` as `check` accepts it; None when absent, refused by
        `check` (then deleted), or Redis is down."""
        return (await self.get_json_many([key], check, kind=kind)).get(key)

    async def put_json(self, key: str, value: Any, *, ttl_s: float, kind: str) -> None:
        """Keep a JSON document for `ttl_s` (milliseconds precision)."""
        await self.put_json_many([(key, value, ttl_s)], kind=kind)

    async def get_json_many(
        self, keys: list[str], check: Callable[[Any], T | None], *, kind: str
    ) -> dict[str, T]:
        """The documents under `keys` that exist and pass `check`, in one round trip (bad ones
        are deleted); nothing when Redis is down."""
        if not keys:
            return {}
        try:
            raws = await self._do(f"get_{kind}", lambda redis: redis.mget(keys))
        except RedisUnavailable:
            return {}
        found: dict[str, T] = {}
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                checked = check(loads_request(raw))
            except RequestJSONError as exc:
                await self._drop(key, kind, str(exc))
                continue
            if checked is None:
                await self._drop(key, kind, "not the shape this gateway writes")
                continue
            found[key] = checked
        return found

    async def put_json_many(self, items: list[tuple[str, Any, float]], *, kind: str) -> None:
        """Keep (key, document, ttl_s) items in one round trip."""
        if not items:
            return

        async def write(redis: Redis) -> Any:
            async with redis.pipeline(transaction=False) as pipe:
                for key, value, ttl_s in items:
                    text = dumps(value, separators=(",", ":"))
                    pipe.set(key, text, px=max(int(ttl_s * 1000), 1))
                return await pipe.execute()

        with contextlib.suppress(RedisUnavailable, ResponseError):
            await self._do(f"put_{kind}", write)

    # -- leases (cross-replica single flight) --------------------------------------------------
    async def acquire(self, key: str, *, ttl_s: float) -> Lock | None:
        """A lease on `key` for `ttl_s`, or None when another holder has it. Raises
        `RedisUnavailable`."""
        lock = self._client.lock(
            key, timeout=ttl_s, blocking=False, thread_local=False, raise_on_release_error=False
        )
        acquired = await self._do("acquire_lease", lambda _redis: lock.acquire())
        return lock if acquired else None

    async def extend(self, lease: Lock, *, ttl_s: float) -> bool:
        """Renew a held lease to `ttl_s` from now; False when it was lost (or Redis is down)."""
        try:
            return bool(
                await self._do("extend_lease", lambda _redis: lease.extend(ttl_s, replace_ttl=True))
            )
        except (RedisUnavailable, LockError, ResponseError):
            return False

    async def release(self, lease: Lock) -> None:
        """Give a lease back (one that expired meanwhile is left alone)."""
        with contextlib.suppress(RedisUnavailable, LockError, ResponseError):
            await self._do("release_lease", lambda _redis: lease.release())


def _png_problem(png: Any, digest: Any) -> str | None:
    if not isinstance(png, bytes) or not isinstance(digest, bytes):
        return "incomplete entry"
    if not png.startswith(PNG_SIGNATURE):
        return "not a PNG"
    if hashlib.sha256(png).hexdigest().encode() != digest:
        return "digest does not match"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]
