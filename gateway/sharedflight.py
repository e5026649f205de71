"""Work done once across replicas: take what another replica made, else hold a lease and make it.

The cross-replica sibling of `bytecache.SingleFlight`, which still runs in front of it, so one
task per replica takes part. `SharedFlight.run`:
1. the value is already in Redis: it is used (the store checked it);
2. else this replica asks for a lease on the work (redis-py's `Lock`, `LEASE_S`, renewed while
   the work runs, so a holder that dies lets it lapse within `LEASE_S`). The holder looks once
   more (the value may have landed in between), makes the value, publishes it, gives the lease
   back;
3. a replica that finds the lease held waits for the value, polling, up to `wait_s` (the
   work's own deadline). When the lease is gone without a value (its holder failed or died) it
   takes the lease and does the work itself. Past `wait_s`: `SharedWaitTimeout`. A lease no
   replica could hold (no TTL, a TTL past `LEASE_S`, a token not signed by this fleet: written
   by someone else) is broken and taken by whoever asks for it (`SharedStore.acquire`): it
   costs a round trip, never more than `LEASE_S`.
Redis failing at any step: the work is done here, as it is without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from redis.asyncio.lock import Lock

from gateway.observability import Metrics
from gateway.sharedstore import RedisUnavailable, SharedStore

V = TypeVar("V")
# A lease lapses this long after its holder last renewed it (renewed every third of it). Also
# the longest TTL a lease can rightly have: one with more left is broken (see above).
LEASE_S = 3.0
FIRST_POLL_S = 0.01
LAST_POLL_S = 0.1


class SharedWaitTimeout(TimeoutError):
    """Another replica held the work past this request's deadline."""


class _GoLocal:
    """Redis failed while waiting: do the work here."""


_GO_LOCAL = _GoLocal()


class SharedFlight(Generic[V]):
    """Cross-replica single flight for one tier of work (charts, lineage searches)."""

    def __init__(self, store: SharedStore, *, metrics: Metrics, tier: str) -> None:
        self.store = store
        self.metrics = metrics
        self.tier = tier

    async def run(
        self,
        name: str,
        *,
        read: Callable[[], Awaitable[V | None]],
        produce: Callable[[], Awaitable[V]],
        publish: Callable[[V], Awaitable[None]],
        wait_s: float,
    ) -> V:
        """The value shared under `name`, made at most once across replicas while Redis is up.

        `read` answers None when nothing (valid) is shared; it and `publish` swallow Redis's
        failures themselves. Raises what `produce` raises, or `SharedWaitTimeout`.
        """
        found = await read()
        if found is not None:
            return self._outcome(found, "found")
        lease_key = self.store.key("lease", self.tier, name)
        try:
            lease = await self.store.acquire(lease_key, ttl_s=LEASE_S)
        except RedisUnavailable:
            return self._outcome(await produce(), "local")
        if lease is None:
            waited = await self._wait(lease_key, read, wait_s)
            if isinstance(waited, _GoLocal):
                return self._outcome(await produce(), "local")
            if not isinstance(waited, Lock):
                return self._outcome(waited, "waited")
            lease = waited
        else:
            # Between the first read and the lease another replica may have finished.
            found = await read()
            if found is not None:
                await self.store.release(lease)
                return self._outcome(found, "found")
        return await self._produce_holding(lease, produce, publish)

    async def _wait(
        self, lease_key: str, read: Callable[[], Awaitable[V | None]], wait_s: float
    ) -> V | Lock | _GoLocal:
        """The value once another replica publishes it, the lease once it is free, or
        `_GO_LOCAL` when Redis fails meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        pause = FIRST_POLL_S
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SharedWaitTimeout(f"another replica held the {self.tier} work too long")
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, LAST_POLL_S)
            found = await read()
            if found is not None:
                return found
            try:
                lease = await self.store.acquire(lease_key, ttl_s=LEASE_S)
            except RedisUnavailable:
                return _GO_LOCAL
            if lease is not None:
                # The holder let go without a value (it failed or died): our turn.
                found = await read()
                if found is not None:
                    await self.store.release(lease)
                    return found
                return lease

    async def _produce_holding(
        self,
        lease: Lock,
        produce: Callable[[], Awaitable[V]],
        publish: Callable[[V], Awaitable[None]],
    ) -> V:
        done = asyncio.Event()
        renewing = asyncio.ensure_future(self._renew(lease, done))
        try:
            value = await produce()
            await publish(value)
        finally:
            # The event ends the renewals even when the cancel lands inside a Redis call that
            # swallows it: a holder stuck renewing a lease for work it finished hung a request
            # (and a test) for minutes once.
            done.set()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            # Shielded: a cancelled holder still frees the lease for the next replica.
            await asyncio.shield(self.store.release(lease))
        return self._outcome(value, "produced")

    async def _renew(self, lease: Lock, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), LEASE_S / 3)
            if done.is_set() or not await self.store.extend(lease, ttl_s=LEASE_S):
                return

    def _outcome(self, value: V, outcome: str) -> V:
        self.metrics.shared_flights.labels(self.tier, outcome).inc()
        return value
