"""Redis behind the in-process tiers: shared by replicas, optional, untrusted, never in the way.

Every operation has a budget (`GATEWAY_REDIS_TIMEOUT_S`). When one fails (refused, reset, timed
out, or an answer that is not Redis's) the caller is told `RedisUnavailable` and does the work
itself, as a gateway without Redis would. After a failure Redis is skipped for `RETRY_S`, so the
requests meanwhile pay nothing for a Redis that is down; then one operation tries it again, and
sharing resumes by itself when it answers. Each failure is counted by operation
(`gateway_redis_errors_total`); the change of state is logged once each way.

Redis is not trusted: anyone who can write to it may write anything under any key. So every
entry is bound to its key and its lifetime by an HMAC-SHA256 with the fleet's secret
(`GATEWAY_REDIS_SIGNING_KEY`), and nothing read back is used before it is checked whole:
- a chart is a hash of exactly {png, sig}, `sig` = b"v1:<expires ms>:<hex mac>"; the PNG is
  at most the per-chart cap (HSTRLEN, read in the same script before the value is), its chunk
  structure whole from IHDR to a final IEND;
- a JSON document is a string b"v1:<expires ms>:<hex mac>:<json>" of at most
  `max_document_bytes` (STRLEN first, likewise), strict JSON, passing the caller's check;
- a lease is redis-py's `Lock` under a signed token b"v1:<nonce>:<hex mac>", always with a TTL.
  A lease no replica could hold (no TTL, a TTL past its longest renewal, a token not ours, a
  value of another type or size) is broken and taken by the replica that asks for it: it costs
  a round trip, where it used to block its chart until someone deleted it.
The mac covers the format version, the entry's kind, the full Redis key, the expiry and the
value: an entry copied under another key, replayed after its expiry, cut short or grown does
not verify. A bad entry is deleted (UNLINK: a huge one is freed off Redis's main thread) and
counted (`gateway_redis_rejected_total`, by kind), never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError, ResponseError

from gateway.observability import Metrics
from gateway.settings import DEVELOPMENT_REDIS_SIGNING_KEY
from gateway.strictjson import RequestJSONError, dumps, loads_request

log = structlog.get_logger("gateway.redis")
T = TypeVar("T")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# After a failure, how long Redis is skipped before one operation tries it again.
RETRY_S = 1.0
# The entry format's version, first in every signed value: a later format is told apart (and,
# until this code knows it, refused like any other entry it cannot verify).
ENTRY_VERSION = b"v1"
# Lineage outcomes, ETags and the experiment listing are small; 10,000 experiments with their
# names are well under this.
MAX_DOCUMENT_BYTES = 1024 * 1024
# A lease's token (b"v1:" + 32 hex nonce + b":" + 64 hex mac) and a chart's `sig` are this short.
MAX_TOKEN_BYTES = 128
# Replicas' clocks differ: a signed expiry is honoured this long after it passed (the key's
# own TTL in Redis ends it anyway; this bounds what a replayed entry can do).
CLOCK_SKEW_S = 5.0


class RedisUnavailable(Exception):
    """Redis failed, or is being skipped after a failure: do the work locally."""


class BadEntryError(Exception):
    """An entry read back from Redis failed its check: it is dropped, not used."""


# Each read is one round trip that sizes the value before reading it: a value over the cap, or
# of a type this gateway never writes there, comes back as a reason, never as bytes. (TYPE,
# HLEN, HSTRLEN and STRLEN are O(1).)
_READ_CHART = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 0 end
if kind ~= 'hash' then return 'not a hash' end
if redis.call('HLEN', KEYS[1]) ~= 2 then return 'not the fields this gateway writes' end
if redis.call('HSTRLEN', KEYS[1], 'png') > tonumber(ARGV[1]) then return 'over the size cap' end
if redis.call('HSTRLEN', KEYS[1], 'sig') > tonumber(ARGV[2]) then return 'signature too long' end
local fields = redis.call('HMGET', KEYS[1], 'png', 'sig')
if not fields[1] or not fields[2] then return 'not the fields this gateway writes' end
return fields
"""
_READ_STRINGS = """
local found = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then found[i] = 0
  elseif kind ~= 'string' then found[i] = 1
  elseif redis.call('STRLEN', key) > tonumber(ARGV[1]) then found[i] = 2
  else found[i] = redis.call('GET', key) end
end
return found
"""
_STRING_PROBLEMS = {1: "not a string", 2: "over the size cap"}
# A lease's value (sized first, as above) and its remaining TTL in ms (-1: none).
_READ_LEASE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0, -2} end
if kind ~= 'string' then return {1, redis.call('PTTL', KEYS[1])} end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
  return {2, redis.call('PTTL', KEYS[1])}
end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
# Break a lease only if it is still the one judged (its holder may have let go meanwhile, and
# another replica taken it rightfully): by its shape (ARGV[1] = 'shape': another type, or over
# the size cap ARGV[3]) or by its value (ARGV[1] = 'value': still exactly ARGV[2], which may
# be empty).
_BREAK_LEASE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return 0 end
local judged
if ARGV[1] == 'shape' then
  judged = kind ~= 'string' or redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[3])
else
  judged = kind == 'string' and redis.call('GET', KEYS[1]) == ARGV[2]
end
if judged then return redis.call('UNLINK', KEYS[1]) end
return 0
"""


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
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
        signing_key: bytes = DEVELOPMENT_REDIS_SIGNING_KEY.encode("utf-8"),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_chart_bytes = max_chart_bytes
        self.max_document_bytes = max_document_bytes
        self._signing_key = signing_key
        self._clock = clock
        self._wall_clock = wall_clock
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
        self._read_chart = self._client.register_script(_READ_CHART)
        self._read_strings = self._client.register_script(_READ_STRINGS)
        self._read_lease = self._client.register_script(_READ_LEASE)
        self._break_lease = self._client.register_script(_BREAK_LEASE)

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
        with contextlib.suppress(RedisUnavailable, ResponseError):
            await self._do("delete", lambda redis: redis.unlink(key))

    def _expiry_ms(self, ttl_s: float) -> int:
        return int((self._wall_clock() + ttl_s) * 1000)

    def _seal(self, kind: str, key: str, value: bytes, expires_ms: int) -> bytes:
        """The signature of `value` under `key` until `expires_ms`: version, expiry, mac."""
        mac = entry_mac(self._signing_key, kind, key, expires_ms, value)
        return b"%s:%d:%s" % (ENTRY_VERSION, expires_ms, mac)

    def _unseal(self, kind: str, key: str, value: bytes, seal: bytes) -> None:
        """Raise `BadEntryError` unless `seal` is this store's signature of `value` under
        `key`, unexpired."""
        version, _, rest = seal.partition(b":")
        if version != ENTRY_VERSION:
            raise BadEntryError("not signed (or signed in an unknown format)")
        expires, _, mac = rest.partition(b":")
        if not expires.isdigit() or len(expires) > 15:
            raise BadEntryError("not signed (or signed in an unknown format)")
        expires_ms = int(expires)
        expected = entry_mac(self._signing_key, kind, key, expires_ms, value)
        if not hmac.compare_digest(mac, expected):
            raise BadEntryError("signature does not match (another key's entry, or forged)")
        if expires_ms < (self._wall_clock() - CLOCK_SKEW_S) * 1000:
            raise BadEntryError("signed lifetime is over (replayed)")

    # -- charts --------------------------------------------------------------------------------
    async def get_png(self, key: str) -> bytes | None:
        """The PNG stored under `key` once checked; None when absent, bad, or Redis is down."""
        try:
            found = await self._do(
                "get_chart",
                lambda _redis: self._read_chart(
                    keys=[key], args=[self.max_chart_bytes, MAX_TOKEN_BYTES]
                ),
            )
        except RedisUnavailable:
            return None
        except ResponseError:
            return None  # the script refused (scripting disabled for this user): not shared
        if found == 0:
            return None
        try:
            if isinstance(found, bytes):
                raise BadEntryError(found.decode("ascii", "replace"))
            if not isinstance(found, list) or len(found) != 2:
                raise BadEntryError("not the fields this gateway writes")
            png, seal = found
            if not isinstance(png, bytes) or not isinstance(seal, bytes):
                raise BadEntryError("not the fields this gateway writes")
            self._unseal("chart", key, png, seal)
            check_png(png)
        except BadEntryError as exc:
            await self._drop(key, "chart", str(exc))
            return None
        return png

    async def put_png(self, key: str, data: bytes, *, ttl_s: int) -> None:
        """Keep a PNG for `ttl_s`, signed (larger than the per-chart cap, or not a whole PNG:
        not kept)."""
        if len(data) > self.max_chart_bytes:
            return
        try:
            check_png(data)
        except BadEntryError:
            # A MinIO object with bytes past its IEND, say: served by the replica that read
            # it, but not shared, since every reader would refuse it.
            return
        seal = self._seal("chart", key, data, self._expiry_ms(ttl_s))

        async def write(redis: Redis) -> Any:
            async with redis.pipeline(transaction=True) as pipe:
                # Whatever was there goes first: a field someone added would outlive HSET.
                pipe.unlink(key)
                pipe.hset(key, mapping={"png": data, "sig": seal})
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
        """The documents under `keys` that exist, verify and pass `check`, in one round trip
        (bad ones are deleted); nothing when Redis is down."""
        if not keys:
            return {}
        try:
            raws = await self._do(
                f"get_{kind}",
                lambda _redis: self._read_strings(keys=keys, args=[self.max_document_bytes]),
            )
        except (RedisUnavailable, ResponseError):
            return {}
        found: dict[str, T] = {}
        for key, raw in zip(keys, raws, strict=True):
            if raw == 0:
                continue
            try:
                if not isinstance(raw, bytes):
                    raise BadEntryError(_STRING_PROBLEMS.get(raw, "not a string"))
                version, _, rest = raw.partition(b":")
                expires, _, rest = rest.partition(b":")
                mac, _, text = rest.partition(b":")
                self._unseal(f"json:{kind}", key, text, b"%s:%s:%s" % (version, expires, mac))
                checked = check(loads_request(text))
            except (BadEntryError, RequestJSONError) as exc:
                await self._drop(key, kind, str(exc))
                continue
            if checked is None:
                await self._drop(key, kind, "not the shape this gateway writes")
                continue
            found[key] = checked
        return found

    async def put_json_many(self, items: list[tuple[str, Any, float]], *, kind: str) -> None:
        """Keep (key, document, ttl_s) items in one round trip, signed (a document larger
        than `max_document_bytes` is not kept: it would be refused on the way back)."""
        entries = []
        for key, value, ttl_s in items:
            text = dumps(value, separators=(",", ":")).encode("utf-8")
            entry = self._seal(f"json:{kind}", key, text, self._expiry_ms(ttl_s)) + b":" + text
            if len(entry) <= self.max_document_bytes:
                entries.append((key, entry, max(int(ttl_s * 1000), 1)))
        if not entries:
            return

        async def write(redis: Redis) -> Any:
            async with redis.pipeline(transaction=False) as pipe:
                for key, entry, ttl_ms in entries:
                    pipe.set(key, entry, px=ttl_ms)
                return await pipe.execute()

        with contextlib.suppress(RedisUnavailable, ResponseError):
            await self._do(f"put_{kind}", write)

    # -- leases (cross-replica single flight) --------------------------------------------------
    def _lease_token(self, key: str) -> bytes:
        nonce = secrets.token_hex(16).encode("ascii")
        mac = entry_mac(self._signing_key, "lease", key, 0, nonce)
        return b"%s:%s:%s" % (ENTRY_VERSION, nonce, mac)

    def _lease_problem(
        self, key: str, value: bytes | int, pttl_ms: int, ttl_s: float
    ) -> str | None:
        """Why no replica of this fleet could be holding this lease, or None when one may be."""
        if not isinstance(value, bytes):
            return _STRING_PROBLEMS.get(value, "not a string")
        if pttl_ms == -1:
            return "no TTL"
        # A holder sets and renews the lease to `ttl_s` from now: never more is left.
        if pttl_ms > ttl_s * 1000:
            return "TTL past the longest renewal"
        version, _, rest = value.partition(b":")
        nonce, _, mac = rest.partition(b":")
        expected = entry_mac(self._signing_key, "lease", key, 0, nonce)
        if version != ENTRY_VERSION or not hmac.compare_digest(mac, expected):
            return "token not signed by this fleet"
        return None

    async def acquire(self, key: str, *, ttl_s: float) -> Lock | None:
        """A lease on `key` for `ttl_s`, or None when another holder has it. A lease found
        that no replica could hold (see `_lease_problem`) is broken and taken. Raises
        `RedisUnavailable`."""
        lock = await self._try_acquire(key, ttl_s=ttl_s)
        if lock is None and await self._broke_lease(key, ttl_s=ttl_s):
            lock = await self._try_acquire(key, ttl_s=ttl_s)
        return lock

    async def _try_acquire(self, key: str, *, ttl_s: float) -> Lock | None:
        lock = self._client.lock(
            key, timeout=ttl_s, blocking=False, thread_local=False, raise_on_release_error=False
        )
        token = self._lease_token(key)
        acquired = await self._do("acquire_lease", lambda _redis: lock.acquire(token=token))
        return lock if acquired else None

    async def _broke_lease(self, key: str, *, ttl_s: float) -> bool:
        """Whether the lease under `key` was one no replica could hold, now deleted."""
        try:
            value, pttl_ms = await self._do(
                "inspect_lease", lambda _redis: self._read_lease(keys=[key], args=[MAX_TOKEN_BYTES])
            )
        except ResponseError:
            return False
        if value == 0:
            return True  # gone meanwhile: take it
        problem = self._lease_problem(key, value, int(pttl_ms), ttl_s)
        if problem is None:
            return False
        self.metrics.redis_rejected.labels("lease").inc()
        log.warning("redis.entry_rejected", key=key, kind="lease", reason=problem)
        # A value read back is judged by that value (an empty one included); a lease of
        # another type or size came back as a reason code and is judged by its shape.
        mode, judged = ("value", value) if isinstance(value, bytes) else ("shape", b"")
        with contextlib.suppress(ResponseError):
            await self._do(
                "break_lease",
                lambda _redis: self._break_lease(keys=[key], args=[mode, judged, MAX_TOKEN_BYTES]),
            )
        return True

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


def entry_mac(secret: bytes, kind: str, key: str, expires_ms: int, value: bytes) -> bytes:
    """HMAC-SHA256 (hex) binding `value` to its entry kind, full Redis key and expiry.

    Every part but the value has a fixed length or is length-prefixed, so no two different
    (kind, key, expiry, value) give the same message.
    """
    kind_bytes, key_bytes = kind.encode("utf-8"), key.encode("utf-8")
    message = hmac.new(secret, digestmod=hashlib.sha256)
    message.update(b"artifact-lineage-gateway redis entry " + ENTRY_VERSION + b"\n")
    message.update(struct.pack(">H", len(kind_bytes)) + kind_bytes)
    message.update(struct.pack(">I", len(key_bytes)) + key_bytes)
    message.update(struct.pack(">Q", expires_ms))
    message.update(value)
    return message.hexdigest().encode("ascii")


def check_png(data: bytes) -> None:
    """Raise `BadEntryError` unless `data` is a whole PNG: the signature, IHDR first, every
    chunk complete with its CRC, IEND last and nothing after it."""
    if not data.startswith(PNG_SIGNATURE):
        raise BadEntryError("not a PNG")
    offset, first = len(PNG_SIGNATURE), True
    while True:
        if offset + 12 > len(data):
            raise BadEntryError("PNG cut short (no IEND)")
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            raise BadEntryError("PNG cut short (a chunk runs past the end)")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[offset + 4 : end - 4]) != crc:
            raise BadEntryError("PNG chunk CRC does not match")
        if first and kind != b"IHDR":
            raise BadEntryError("PNG does not start with IHDR")
        first = False
        if kind == b"IEND":
            if end != len(data):
                raise BadEntryError("bytes after the PNG's IEND")
            return
        offset = end


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]
