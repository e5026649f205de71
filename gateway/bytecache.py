"""Bytes kept in process: an LRU bounded in bytes, and single flight for concurrent misses.

The scale-out tier (a shared cache across replicas) goes behind `ByteCache`: the image policy
only ever asks `get_or_produce`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key share one producer: the first runs it, the others await it.

    A failure reaches every waiter (and is not remembered: the next call produces again).
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def running(self, key: K) -> bool:
        """True while a producer for `key` is running."""
        return key in self._inflight

    async def run(self, key: K, produce: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The value for `key`, and whether it came from a producer another caller started.

        The producer runs in the first caller's task. When that caller is cancelled (its client
        left, its deadline passed), the work stops with it, and the callers still waiting do
        not inherit its cancellation: one of them produces instead.
        """
        while True:
            running = self._inflight.get(key)
            if running is None:
                break
            try:
                # shield: a waiter that is cancelled must not cancel the producer others await.
                return await asyncio.shield(running), True
            except _ProducerCancelled:
                continue
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await produce()
        except asyncio.CancelledError:
            future.set_exception(_ProducerCancelled())
            future.exception()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        else:
            future.set_result(value)
            return value, False
        finally:
            del self._inflight[key]


class _ProducerCancelled(Exception):
    """The caller running a producer was cancelled; a waiter takes over."""


class ByteCache(Generic[K]):
    """An LRU of byte strings bounded in total bytes (thread-safe), with single-flight fills."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max(max_bytes, 1)
        self._lru: LRUCache[K, bytes] = LRUCache(maxsize=self.max_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self._flight: SingleFlight[K, bytes] = SingleFlight()

    def get(self, key: K) -> bytes | None:
        """Cached bytes, or None."""
        with self._lock:
            return self._lru.get(key)

    def put(self, key: K, data: bytes) -> None:
        """Keep `data` unless it alone is larger than the whole cache."""
        if len(data) <= self.max_bytes:
            with self._lock:
                self._lru[key] = data

    async def get_or_produce(
        self, key: K, produce: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, bool]:
        """Bytes for `key` and whether they were a cache hit; misses for one key produce once."""
        cached = self.get(key)
        if cached is not None:
            return cached, True

        async def produce_and_keep() -> bytes:
            data = await produce()
            self.put(key, data)
            return data

        data, _shared = await self._flight.run(key, produce_and_keep)
        return data, False
