"""The shared tier against a real `redis-server`: what replicas share, what is never served,
and Redis down, refusing or silent (the store answers "nothing" and the work is done here)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.lineage import Key, Outcome, Unavailable
from gateway.mlflow_backend import RunRef, make_backend
from gateway.observability import Metrics
from gateway.resolver import LineageResolver
from gateway.sharedflight import LEASE_S, SharedFlight, SharedWaitTimeout
from gateway.sharedstore import RETRY_S, SharedStore
from tests.faults import RecordingProxy, SilentListener
from tests.servers import RedisServer, free_port
from tests.support import make_run, require_redis_server

PNG = render_chart(random_walk_bars(30, seed=2), ChartSpec(symbol="SHR"))


def store_for(url: str, *, metrics: Metrics | None = None, **kwargs: Any) -> SharedStore:
    return SharedStore(
        url=url,
        prefix="test:",
        timeout_s=kwargs.pop("timeout_s", 0.5),
        metrics=metrics or Metrics(),
        max_chart_bytes=kwargs.pop("max_chart_bytes", 4 * 1024 * 1024),
        **kwargs,
    )


def errors(metrics: Metrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_redis_errors_total", {"operation": operation}
    )
    return value or 0.0


def flights(metrics: Metrics, tier: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_shared_flights_total", {"tier": tier, "outcome": outcome}
    )
    return value or 0.0


async def closing(*stores: SharedStore) -> None:
    for store in stores:
        await store.aclose()


# -- what replicas share ------------------------------------------------------------------------
def test_a_chart_one_replica_keeps_is_read_by_another(redis_url: str) -> None:
    async def scenario() -> bytes | None:
        a, b = store_for(redis_url), store_for(redis_url)
        try:
            await a.put_png(a.key("chart", "x"), PNG, ttl_s=60)
            return await b.get_png(b.key("chart", "x"))
        finally:
            await closing(a, b)

    assert asyncio.run(scenario()) == PNG


def test_a_chart_over_the_size_cap_is_not_kept(redis_url: str) -> None:
    async def scenario() -> bytes | None:
        store = store_for(redis_url, max_chart_bytes=len(PNG) - 1)
        try:
            await store.put_png(store.key("chart", "big"), PNG, ttl_s=60)
            return await store.get_png(store.key("chart", "big"))
        finally:
            await closing(store)

    assert asyncio.run(scenario()) is None


def test_a_kept_chart_expires_with_its_ttl(redis_server: RedisServer, redis_url: str) -> None:
    async def scenario() -> None:
        store = store_for(redis_url)
        try:
            await store.put_png(store.key("chart", "ttl"), PNG, ttl_s=60)
        finally:
            await closing(store)

    asyncio.run(scenario())
    with redis_server.client() as client:
        assert 0 < client.ttl("test:chart:ttl") <= 60


# -- what comes back is checked ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("png", "digest"),
    [
        (PNG[:-1] + b"\x00", hashlib.sha256(PNG).hexdigest()),  # bytes changed
        (b"GIF89a" + PNG[6:], None),  # a digest that matches, of something not a PNG
        (PNG, "0" * 64),  # digest changed
    ],
    ids=["bytes-changed", "not-a-png", "digest-changed"],
)
def test_a_corrupted_chart_is_dropped_and_counted_not_served(
    redis_server: RedisServer, redis_url: str, png: bytes, digest: str | None
) -> None:
    with redis_server.client() as client:
        client.hset(
            "test:chart:bad",
            mapping={"png": png, "sha256": digest or hashlib.sha256(png).hexdigest()},
        )
    metrics = Metrics()

    async def scenario() -> bytes | None:
        store = store_for(redis_url, metrics=metrics)
        try:
            return await store.get_png(store.key("chart", "bad"))
        finally:
            await closing(store)

    assert asyncio.run(scenario()) is None
    assert metrics.registry.get_sample_value("gateway_redis_rejected_total", {"kind": "chart"}) == 1
    with redis_server.client() as client:
        assert client.exists("test:chart:bad") == 0


def test_a_key_of_another_type_is_dropped_and_redis_stays_in_use(
    redis_server: RedisServer, redis_url: str
) -> None:
    with redis_server.client() as client:
        client.set("test:chart:typed", b"a string, not a hash")
    metrics = Metrics()

    async def scenario() -> tuple[bytes | None, bytes | None]:
        store = store_for(redis_url, metrics=metrics)
        try:
            wrong = await store.get_png(store.key("chart", "typed"))
            await store.put_png(store.key("chart", "typed"), PNG, ttl_s=60)
            return wrong, await store.get_png(store.key("chart", "typed"))
        finally:
            await closing(store)

    # Dropped, then written and read again at once: no failure was counted, nothing skipped.
    assert asyncio.run(scenario()) == (None, PNG)
    assert errors(metrics, "get_chart") == 0
    assert metrics.registry.get_sample_value("gateway_redis_rejected_total", {"kind": "chart"}) == 1


@pytest.mark.parametrize(
    "stored",
    [b"not json", b'{"etag": NaN}', b'{"etag": 7}', b'{"etag": "x", "more": 1}'],
    ids=["not-json", "nan", "wrong-type", "extra-field"],
)
def test_a_json_document_its_check_refuses_is_dropped(
    redis_server: RedisServer, redis_url: str, stored: bytes
) -> None:
    with redis_server.client() as client:
        client.set("test:object:o", stored)

    def check(value: Any) -> str | None:
        if isinstance(value, dict) and set(value) == {"etag"} and isinstance(value["etag"], str):
            return str(value["etag"])
        return None

    async def scenario() -> str | None:
        store = store_for(redis_url)
        try:
            return await store.get_json(store.key("object", "o"), check, kind="object")
        finally:
            await closing(store)

    assert asyncio.run(scenario()) is None
    with redis_server.client() as client:
        assert client.exists("test:object:o") == 0


# -- Redis down, back, silent -----------------------------------------------------------------
def test_redis_down_answers_nothing_counts_each_failure_and_logs_each_change_once(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    require_redis_server()
    port = free_port()
    now = [0.0]
    metrics = Metrics()
    store = store_for(f"redis://127.0.0.1:{port}/0", metrics=metrics, clock=lambda: now[0])
    server = RedisServer(tmp_path / "redis", port=port)

    async def scenario() -> list[bytes | None]:
        got = []
        try:
            got.append(await store.get_png(store.key("chart", "a")))  # refused: counted
            got.append(await store.get_png(store.key("chart", "a")))  # skipped: not tried
            now[0] += RETRY_S
            got.append(await store.get_png(store.key("chart", "a")))  # tried again: refused
            await asyncio.to_thread(server.start)
            now[0] += RETRY_S
            await store.put_png(store.key("chart", "a"), PNG, ttl_s=60)  # back: shared again
            got.append(await store.get_png(store.key("chart", "a")))
        finally:
            await closing(store)
        return got

    try:
        got = asyncio.run(scenario())
    finally:
        server.stop()
    assert got == [None, None, None, PNG]
    assert errors(metrics, "get_chart") == 2
    changes = [e["event"] for e in log_events if e["event"].startswith("redis.")]
    assert changes == ["redis.unavailable", "redis.available"]


def test_a_silent_redis_costs_each_operation_its_budget_at_most() -> None:
    silent = SilentListener()
    metrics = Metrics()
    now = [0.0]
    store = store_for(
        silent.url.replace("http", "redis"), metrics=metrics, timeout_s=0.2, clock=lambda: now[0]
    )

    async def scenario() -> tuple[bytes | None, float]:
        started = time.monotonic()
        try:
            found = await store.get_png(store.key("chart", "a"))
        finally:
            await closing(store)
        return found, time.monotonic() - started

    try:
        found, elapsed = asyncio.run(scenario())
    finally:
        silent.close()
    assert found is None
    assert elapsed < 2.0  # the 0.2 s budget, not the request's deadline or a hang
    assert errors(metrics, "get_chart") == 1


# -- single flight across replicas ------------------------------------------------------------
def flight_for(store: SharedStore, metrics: Metrics) -> SharedFlight[bytes]:
    return SharedFlight(store, metrics=metrics, tier="chart")


def shared_chart(store: SharedStore, name: str) -> dict[str, Callable[..., Any]]:
    key = store.key("chart", name)

    async def publish(data: bytes) -> None:
        await store.put_png(key, data, ttl_s=60)

    return {"read": lambda: store.get_png(key), "publish": publish}


def test_concurrent_misses_on_two_replicas_produce_once(redis_url: str) -> None:
    produced: list[str] = []
    metrics_a, metrics_b = Metrics(), Metrics()

    async def scenario() -> list[bytes]:
        a, b = store_for(redis_url), store_for(redis_url)

        def producer(replica: str) -> Callable[[], Any]:
            async def produce() -> bytes:
                produced.append(replica)
                await asyncio.sleep(0.3)
                return PNG

            return produce

        try:
            return list(
                await asyncio.gather(
                    flight_for(a, metrics_a).run(
                        "c", produce=producer("a"), wait_s=10, **shared_chart(a, "c")
                    ),
                    flight_for(b, metrics_b).run(
                        "c", produce=producer("b"), wait_s=10, **shared_chart(b, "c")
                    ),
                )
            )
        finally:
            await closing(a, b)

    assert asyncio.run(scenario()) == [PNG, PNG]
    assert len(produced) == 1
    outcomes = {
        outcome: flights(metrics_a, "chart", outcome) + flights(metrics_b, "chart", outcome)
        for outcome in ("produced", "waited", "found", "local")
    }
    assert outcomes["produced"] == 1
    assert outcomes["waited"] + outcomes["found"] == 1


def test_a_holder_stops_renewing_its_lease_when_its_work_is_done_even_if_a_cancel_is_lost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.sharedflight.LEASE_S", 0.3)
    renewals: list[float] = []

    async def scenario() -> bytes:
        store = store_for(redis_url)
        real_extend = store.extend

        renewing = asyncio.Event()

        async def extend_that_loses_a_cancel(lease: Any, *, ttl_s: float) -> bool:
            # What a Redis call caught in the middle of a cancellation may do: finish anyway.
            renewals.append(time.monotonic())
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
            return await real_extend(lease, ttl_s=ttl_s)

        monkeypatch.setattr(store, "extend", extend_that_loses_a_cancel)

        async def produce() -> bytes:
            await renewing.wait()  # ends while a renewal is under way: the cancel lands in it
            return PNG

        flight = flight_for(store, Metrics())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            run = flight.run("c", produce=produce, wait_s=10, **shared_chart(store, "c"))
            value = await asyncio.wait_for(run, timeout=5)
            assert loop.time() - started < 4, "the holder hung after its work was done"
            count = len(renewals)
            await asyncio.sleep(0.5)
            assert len(renewals) == count, "a lease nobody holds is still being renewed"
            return value
        finally:
            await closing(store)

    assert asyncio.run(scenario()) == PNG


def test_a_holder_that_died_lets_its_lease_lapse_and_a_waiter_does_the_work(
    redis_url: str,
) -> None:
    metrics = Metrics()
    produced: list[str] = []

    async def scenario() -> bytes:
        dead, alive = store_for(redis_url), store_for(redis_url)
        try:
            # A replica took the lease and died: no renewal, no release.
            assert await dead.acquire(dead.key("lease", "chart", "d"), ttl_s=0.5) is not None

            async def produce() -> bytes:
                produced.append("alive")
                return PNG

            return await flight_for(alive, metrics).run(
                "d", produce=produce, wait_s=10, **shared_chart(alive, "d")
            )
        finally:
            await closing(dead, alive)

    assert asyncio.run(scenario()) == PNG
    assert produced == ["alive"]
    assert flights(metrics, "chart", "produced") == 1


def test_a_waiter_gives_up_at_its_deadline_while_another_replica_holds_the_work(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        holder, waiter = store_for(redis_url), store_for(redis_url)
        try:
            # A lease as a replica holds it (`LEASE_S`, renewed): one with a longer TTL no
            # replica could hold, and the waiter would break it.
            lease = await holder.acquire(holder.key("lease", "chart", "w"), ttl_s=LEASE_S)
            assert lease is not None

            async def produce() -> bytes:
                raise AssertionError("the waiter must not produce while the lease is held")

            await flight_for(waiter, Metrics()).run(
                "w", produce=produce, wait_s=0.3, **shared_chart(waiter, "w")
            )
        finally:
            await closing(holder, waiter)

    with pytest.raises(SharedWaitTimeout):
        asyncio.run(scenario())


def test_with_redis_down_the_work_is_done_here() -> None:
    metrics = Metrics()
    store = store_for(f"redis://127.0.0.1:{free_port()}/0")

    async def scenario() -> bytes:
        async def produce() -> bytes:
            return PNG

        try:
            return await flight_for(store, metrics).run(
                "x", produce=produce, wait_s=10, **shared_chart(store, "x")
            )
        finally:
            await closing(store)

    assert asyncio.run(scenario()) == PNG
    assert flights(metrics, "chart", "local") == 1


# -- lineage across replicas -------------------------------------------------------------------
def replica_resolver(proxy: RecordingProxy, redis_url: str) -> LineageResolver:
    return LineageResolver(
        make_backend(proxy.url, timeout_s=5),
        metrics=Metrics(),
        timeout_s=5,
        shared=store_for(redis_url),
    )


async def lookups(resolver: LineageResolver, keys: list[Key]) -> list[Outcome]:
    try:
        return await resolver.lookup(keys)
    finally:
        await resolver.backend.aclose()
        assert resolver.shared is not None
        await resolver.shared.aclose()


def workflow_searches(proxy: RecordingProxy, workflow_id: str) -> int:
    return sum(workflow_id.encode() in body for body in proxy.bodies("/api/2.0/mlflow/runs/search"))


def test_what_one_replica_found_costs_another_no_mlflow_request(
    mlflow: MlflowClient, experiment: str, mlflow_proxy: RecordingProxy, redis_url: str
) -> None:
    run_id = make_run(mlflow, experiment, workflow_id="wf-shared")
    keys: list[Key] = [("workflow", "wf-shared"), ("run", run_id), ("workflow", "wf-none")]
    first = asyncio.run(lookups(replica_resolver(mlflow_proxy, redis_url), keys))
    assert first == [RunRef(run_id, experiment), RunRef(run_id, experiment), None]
    mlflow_proxy.reset()
    second = asyncio.run(lookups(replica_resolver(mlflow_proxy, redis_url), keys))
    assert second == first
    assert mlflow_proxy.paths() == []


def test_concurrent_lookups_of_one_workflow_on_two_replicas_search_once(
    mlflow: MlflowClient, experiment: str, mlflow_proxy: RecordingProxy, redis_url: str
) -> None:
    run_id = make_run(mlflow, experiment, workflow_id="wf-once")
    mlflow_proxy.delay_s = 0.2  # a search takes a while: the other replica must wait for it

    async def scenario() -> list[list[Outcome]]:
        a = replica_resolver(mlflow_proxy, redis_url)
        b = replica_resolver(mlflow_proxy, redis_url)
        return list(
            await asyncio.gather(
                lookups(a, [("workflow", "wf-once")]), lookups(b, [("workflow", "wf-once")])
            )
        )

    assert asyncio.run(scenario()) == [[RunRef(run_id, experiment)]] * 2
    assert workflow_searches(mlflow_proxy, "wf-once") == 1


def test_a_shared_miss_is_kept_no_longer_than_a_miss(
    mlflow_proxy: RecordingProxy, redis_server: RedisServer, redis_url: str
) -> None:
    asyncio.run(lookups(replica_resolver(mlflow_proxy, redis_url), [("workflow", "wf-miss")]))
    with redis_server.client() as client:
        (key,) = client.keys("test:lineage:workflow:*")
        assert 0 < client.pttl(key) <= 30_000


def test_an_mlflow_failure_is_never_shared(
    mlflow_proxy: RecordingProxy, redis_server: RedisServer, redis_url: str
) -> None:
    mlflow_proxy.stop()
    outcomes = asyncio.run(
        lookups(replica_resolver(mlflow_proxy, redis_url), [("workflow", "wf-down")])
    )
    assert isinstance(outcomes[0], Unavailable)
    with redis_server.client() as client:
        assert client.keys("test:lineage:*") == []
