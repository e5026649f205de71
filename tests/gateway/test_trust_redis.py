"""Redis is not trusted: every entry read back is bound to its key and checked whole.

Hostile entries are written with a plain redis-py client into the real `redis-server`, as any
writer of an unauthenticated Redis could: charts copied under another chart's key, truncated or
oversized PNGs, documents naming another workflow's run, leases without a TTL. Each is refused,
deleted and counted (`gateway_redis_rejected_total`), and what the gateway shares itself still
works alongside them.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.app import create_app
from gateway.lineage import Key, Outcome
from gateway.mlflow_backend import RunRef, make_backend
from gateway.observability import Metrics
from gateway.resolver import LineageResolver
from gateway.settings import Settings
from gateway.sharedflight import LEASE_S, SharedFlight
from gateway.sharedstore import SharedStore, entry_mac
from tests.faults import RecordingProxy
from tests.servers import RedisServer
from tests.support import lineage_settings, make_run

PNG = render_chart(random_walk_bars(30, seed=3), ChartSpec(symbol="TRU"))
OTHER_PNG = render_chart(random_walk_bars(30, seed=13), ChartSpec(symbol="OTH"))
SECRET = b"a fleet secret of at least thirty-two bytes"
CAP = 1024 * 1024


def store_for(url: str, *, metrics: Metrics | None = None, **kwargs: Any) -> SharedStore:
    return SharedStore(
        url=url,
        prefix="test:",
        timeout_s=kwargs.pop("timeout_s", 0.5),
        metrics=metrics or Metrics(),
        max_chart_bytes=kwargs.pop("max_chart_bytes", CAP),
        **kwargs,
    )


def rejected(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("gateway_redis_rejected_total", {"kind": kind})
    return value or 0.0


def redis_errors(metrics: Metrics) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "gateway_redis_errors"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def sent_bytes(client: Any) -> int:
    """What Redis has written to its clients so far (its own count)."""
    return int(client.info("stats")["total_net_output_bytes"])


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


async def closing(*stores: SharedStore) -> None:
    for store in stores:
        await store.aclose()


def read_chart(url: str, name: str, metrics: Metrics, **store: Any) -> tuple[bytes | None, bool]:
    """The chart a fresh replica's store reads under `chart:<name>`, and whether it still
    deems Redis available afterwards."""

    async def read() -> tuple[bytes | None, bool]:
        shared = store_for(url, metrics=metrics, **store)
        try:
            return await shared.get_png(shared.key("chart", name)), shared.available
        finally:
            await closing(shared)

    return asyncio.run(read())


def read_object(url: str, name: str, metrics: Metrics, **store: Any) -> tuple[str | None, bool]:
    """The object document a fresh replica's store reads under `object:<name>`, and whether it
    still deems Redis available afterwards."""

    async def read() -> tuple[str | None, bool]:
        shared = store_for(url, metrics=metrics, **store)
        try:
            found = await shared.get_json(shared.key("object", name), etag_check, kind="object")
            return found, shared.available
        finally:
            await closing(shared)

    return asyncio.run(read())


# -- charts -------------------------------------------------------------------------------------
def test_a_chart_copied_under_another_charts_key_is_refused_deleted_and_counted(
    redis_server: RedisServer, redis_url: str
) -> None:
    metrics = Metrics()

    async def write() -> None:
        store = store_for(redis_url)
        try:
            await store.put_png(store.key("chart", "c13"), OTHER_PNG, ttl_s=60)
            await store.put_png(store.key("chart", "c3"), PNG, ttl_s=60)
        finally:
            await closing(store)

    asyncio.run(write())
    with redis_server.client() as client:
        # Chart 13's entry, byte for byte, under chart 3's key.
        client.delete("test:chart:c3")
        client.hset("test:chart:c3", mapping=client.hgetall("test:chart:c13"))

    async def read() -> tuple[bytes | None, bytes | None]:
        store = store_for(redis_url, metrics=metrics)
        try:
            return (
                await store.get_png(store.key("chart", "c3")),
                await store.get_png(store.key("chart", "c13")),
            )
        finally:
            await closing(store)

    assert asyncio.run(read()) == (None, OTHER_PNG)
    assert rejected(metrics, "chart") == 1
    with redis_server.client() as client:
        assert client.exists("test:chart:c3") == 0


@pytest.mark.parametrize(
    "png",
    [
        PNG[: len(PNG) // 2],  # cut in the middle of a chunk
        PNG[:-12],  # every chunk whole, but no IEND
        PNG + b"trailing bytes",  # something after IEND
        PNG[:8] + chunk(b"IEND", b""),  # a signature and an IEND, no image
    ],
    ids=["cut", "no-iend", "after-iend", "no-ihdr"],
)
def test_an_unsigned_broken_png_with_its_own_digest_is_refused(
    redis_server: RedisServer, redis_url: str, png: bytes
) -> None:
    with redis_server.client() as client:
        client.hset(
            "test:chart:cut", mapping={"png": png, "sha256": hashlib.sha256(png).hexdigest()}
        )
    metrics = Metrics()
    assert read_chart(redis_url, "cut", metrics) == (None, True)
    assert rejected(metrics, "chart") == 1
    with redis_server.client() as client:
        assert client.exists("test:chart:cut") == 0


def test_an_oversized_chart_is_refused_without_being_read(
    redis_server: RedisServer, redis_url: str
) -> None:
    blob = PNG + b"\0" * (6 * CAP)  # 6 MB over a 1 MB cap, with a digest that matches
    with redis_server.client() as client:
        client.hset(
            "test:chart:big", mapping={"png": blob, "sha256": hashlib.sha256(blob).hexdigest()}
        )
        before = sent_bytes(client)
    metrics = Metrics()
    assert read_chart(redis_url, "big", metrics) == (None, True)
    with redis_server.client() as client:
        assert sent_bytes(client) - before < 64 * 1024, "the oversized value was read"
        assert client.exists("test:chart:big") == 0
    assert rejected(metrics, "chart") == 1
    assert redis_errors(metrics) == 0


# -- JSON documents ---------------------------------------------------------------------------
def etag_check(value: Any) -> str | None:
    if isinstance(value, dict) and set(value) == {"etag"} and isinstance(value["etag"], str):
        return str(value["etag"])
    return None


def test_a_document_copied_under_another_key_is_refused_deleted_and_counted(
    redis_server: RedisServer, redis_url: str
) -> None:
    metrics = Metrics()

    async def write() -> None:
        store = store_for(redis_url)
        try:
            await store.put_json(store.key("object", "a"), {"etag": "A"}, ttl_s=60, kind="object")
        finally:
            await closing(store)

    asyncio.run(write())
    with redis_server.client() as client:
        client.set("test:object:b", client.get("test:object:a"), px=60_000)

    async def read() -> tuple[str | None, str | None]:
        store = store_for(redis_url, metrics=metrics)
        try:
            return (
                await store.get_json(store.key("object", "b"), etag_check, kind="object"),
                await store.get_json(store.key("object", "a"), etag_check, kind="object"),
            )
        finally:
            await closing(store)

    assert asyncio.run(read()) == (None, "A")
    assert rejected(metrics, "object") == 1
    with redis_server.client() as client:
        assert client.exists("test:object:b") == 0


def test_an_unsigned_document_is_refused_deleted_and_counted(
    redis_server: RedisServer, redis_url: str
) -> None:
    with redis_server.client() as client:
        client.set("test:object:u", b'{"etag":"forged"}', px=60_000)
    metrics = Metrics()
    assert read_object(redis_url, "u", metrics) == (None, True)
    assert rejected(metrics, "object") == 1
    with redis_server.client() as client:
        assert client.exists("test:object:u") == 0


def test_an_oversized_document_is_deleted_unread_and_redis_stays_in_use(
    redis_server: RedisServer, redis_url: str
) -> None:
    with redis_server.client() as client:
        client.set("test:object:huge", b'{"etag":"' + b"x" * (32 * CAP) + b'"}')
        before = sent_bytes(client)
    metrics = Metrics()
    # A short budget: reading 32 MB within it would fail, and mark Redis unavailable.
    assert read_object(redis_url, "huge", metrics, timeout_s=0.05) == (None, True)
    with redis_server.client() as client:
        assert sent_bytes(client) - before < 64 * 1024, "the oversized value was read"
        assert client.exists("test:object:huge") == 0
    assert rejected(metrics, "object") == 1
    assert redis_errors(metrics) == 0


def test_a_document_key_of_another_type_is_refused_and_deleted(
    redis_server: RedisServer, redis_url: str
) -> None:
    with redis_server.client() as client:
        client.rpush("test:object:list", b'{"etag":"x"}')
    metrics = Metrics()
    assert read_object(redis_url, "list", metrics) == (None, True)
    assert rejected(metrics, "object") == 1
    with redis_server.client() as client:
        assert client.exists("test:object:list") == 0


# -- lineage documents ------------------------------------------------------------------------
def replica_resolver(proxy: RecordingProxy, redis_url: str, metrics: Metrics) -> LineageResolver:
    return LineageResolver(
        make_backend(proxy.url, timeout_s=5),
        metrics=metrics,
        timeout_s=5,
        shared=store_for(redis_url, metrics=metrics),
    )


async def lookups(resolver: LineageResolver, keys: list[Key]) -> list[Outcome]:
    try:
        return await resolver.lookup(keys)
    finally:
        await resolver.backend.aclose()
        assert resolver.shared is not None
        await resolver.shared.aclose()


def test_a_workflows_document_copied_under_another_workflow_is_not_its_lineage(
    mlflow: MlflowClient, experiment: str, mlflow_proxy: RecordingProxy, redis_server: RedisServer
) -> None:
    with redis_server.client() as client:
        client.flushall()
    url = redis_server.url
    run_a = make_run(mlflow, experiment, workflow_id="wf-trust-a")
    asyncio.run(
        lookups(replica_resolver(mlflow_proxy, url, Metrics()), [("workflow", "wf-trust-b")])
    )
    asyncio.run(
        lookups(replica_resolver(mlflow_proxy, url, Metrics()), [("workflow", "wf-trust-a")])
    )
    a_key = "test:lineage:workflow:" + hashlib.sha256(b"wf-trust-a").hexdigest()[:40]
    b_key = "test:lineage:workflow:" + hashlib.sha256(b"wf-trust-b").hexdigest()[:40]
    with redis_server.client() as client:
        assert client.exists(a_key) == 1
        assert client.exists(b_key) == 1
        # wf-trust-b has no run; its shared miss is replaced by wf-trust-a's hit.
        client.set(b_key, client.get(a_key), px=60_000)
    metrics = Metrics()
    outcomes = asyncio.run(
        lookups(replica_resolver(mlflow_proxy, url, metrics), [("workflow", "wf-trust-b")])
    )
    assert outcomes == [None]
    assert rejected(metrics, "lineage") == 1
    again = asyncio.run(
        lookups(replica_resolver(mlflow_proxy, url, Metrics()), [("workflow", "wf-trust-a")])
    )
    assert again == [RunRef(run_a, experiment)]


# -- leases -------------------------------------------------------------------------------------
def produce_once(produced: list[str]) -> Any:
    async def produce() -> bytes:
        produced.append("made")
        return PNG

    return produce


@pytest.mark.parametrize(
    ("value", "ttl_ms"),
    [
        (b"a-token-nobody-holds", None),  # no TTL: would block the chart until deleted
        (b"a-token-nobody-holds", 3_600_000),  # a TTL past the longest renewal
        (b"x" * (8 * CAP), None),  # huge, no TTL
        (b"", None),  # empty, no TTL
    ],
    ids=["no-ttl", "ttl-beyond-renewal", "huge", "empty"],
)
def test_a_lease_no_replica_could_hold_is_broken_and_the_chart_made_within_the_lease_time(
    redis_server: RedisServer, redis_url: str, value: bytes, ttl_ms: int | None
) -> None:
    with redis_server.client() as client:
        client.set("test:lease:chart:held", value, px=ttl_ms)
    metrics = Metrics()
    produced: list[str] = []

    async def scenario() -> tuple[bytes, float]:
        store = store_for(redis_url, metrics=metrics)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            made = await SharedFlight[bytes](store, metrics=metrics, tier="chart").run(
                "held",
                read=lambda: store.get_png(store.key("chart", "held")),
                produce=produce_once(produced),
                publish=lambda data: store.put_png(store.key("chart", "held"), data, ttl_s=60),
                wait_s=4 * LEASE_S,
            )
            return made, loop.time() - started
        finally:
            await closing(store)

    made, elapsed = asyncio.run(scenario())
    assert made == PNG
    assert produced == ["made"]
    assert elapsed < LEASE_S
    assert rejected(metrics, "lease") == 1
    with redis_server.client() as client:
        assert client.exists("test:lease:chart:held") == 0  # released after the work


def test_a_lease_a_replica_holds_is_waited_for_not_broken(
    redis_server: RedisServer, redis_url: str
) -> None:
    metrics = Metrics()

    async def scenario() -> list[bytes]:
        holder, waiter = store_for(redis_url), store_for(redis_url, metrics=metrics)
        produced: list[str] = []
        try:
            lease = await holder.acquire(holder.key("lease", "chart", "h"), ttl_s=LEASE_S)
            assert lease is not None

            async def publish_later() -> None:
                await asyncio.sleep(0.2)
                await holder.put_png(holder.key("chart", "h"), PNG, ttl_s=60)
                await holder.release(lease)

            publishing = asyncio.ensure_future(publish_later())
            made = await SharedFlight[bytes](waiter, metrics=metrics, tier="chart").run(
                "h",
                read=lambda: waiter.get_png(waiter.key("chart", "h")),
                produce=produce_once(produced),
                publish=lambda data: waiter.put_png(waiter.key("chart", "h"), data, ttl_s=60),
                wait_s=4 * LEASE_S,
            )
            await publishing
            assert produced == []
            return [made]
        finally:
            await closing(holder, waiter)

    assert asyncio.run(scenario()) == [PNG]
    assert rejected(metrics, "lease") == 0


# -- entries signed with the fleet's key, still refused --------------------------------------
def signed_chart(key: str, png: bytes, *, expires_ms: int | None = None) -> dict[str, bytes]:
    """A chart entry as a holder of the fleet's secret would write it (no attacker can)."""
    expires = expires_ms if expires_ms is not None else int((time.time() + 60) * 1000)
    mac = entry_mac(SECRET, "chart", key, expires, png)
    return {"png": png, "sig": b"v1:%d:%s" % (expires, mac)}


@pytest.mark.parametrize(
    "entry",
    [
        signed_chart("test:chart:s", PNG[: len(PNG) // 2]),
        signed_chart("test:chart:s", PNG[:-12]),
        signed_chart("test:chart:s", PNG + b"after"),
        signed_chart("test:chart:s", PNG, expires_ms=int((time.time() - 3600) * 1000)),
        signed_chart("test:chart:other", PNG),
        {**signed_chart("test:chart:s", PNG), "extra": b"field"},
        {"png": PNG, "sig": signed_chart("test:chart:s", PNG)["sig"].replace(b"v1", b"v2", 1)},
    ],
    ids=["cut", "no-iend", "after-iend", "expired", "other-key", "extra-field", "unknown-version"],
)
def test_a_signed_chart_that_is_not_whole_current_and_its_own_is_refused(
    redis_server: RedisServer, redis_url: str, entry: dict[str, bytes]
) -> None:
    with redis_server.client() as client:
        client.hset("test:chart:s", mapping=entry)
    metrics = Metrics()
    assert read_chart(redis_url, "s", metrics, signing_key=SECRET) == (None, True)
    assert rejected(metrics, "chart") == 1
    with redis_server.client() as client:
        assert client.exists("test:chart:s") == 0


def test_an_entry_signed_with_another_fleets_key_is_refused(redis_url: str) -> None:
    metrics = Metrics()

    async def scenario() -> tuple[bytes | None, str | None]:
        ours = store_for(redis_url, metrics=metrics, signing_key=SECRET)
        theirs = store_for(redis_url, signing_key=b"another fleet's secret, also long enough")
        try:
            await theirs.put_png(theirs.key("chart", "f"), PNG, ttl_s=60)
            await theirs.put_json(theirs.key("object", "f"), {"etag": "x"}, ttl_s=60, kind="object")
            return (
                await ours.get_png(ours.key("chart", "f")),
                await ours.get_json(ours.key("object", "f"), etag_check, kind="object"),
            )
        finally:
            await closing(ours, theirs)

    assert asyncio.run(scenario()) == (None, None)
    assert rejected(metrics, "chart") == 1
    assert rejected(metrics, "object") == 1


def test_a_png_that_is_not_whole_is_not_shared(redis_server: RedisServer, redis_url: str) -> None:
    async def write() -> None:
        store = store_for(redis_url)
        try:
            await store.put_png(store.key("chart", "w"), PNG + b"after", ttl_s=60)
        finally:
            await closing(store)

    asyncio.run(write())
    with redis_server.client() as client:
        assert client.exists("test:chart:w") == 0  # every reader would refuse it


def test_a_document_over_the_cap_is_not_shared(redis_server: RedisServer, redis_url: str) -> None:
    async def write() -> None:
        store = store_for(redis_url, max_document_bytes=1024)
        try:
            await store.put_json(
                store.key("object", "w"), {"etag": "x" * 2000}, ttl_s=60, kind="object"
            )
        finally:
            await closing(store)

    asyncio.run(write())
    with redis_server.client() as client:
        assert client.exists("test:object:w") == 0


# -- replicas after hostile entries -----------------------------------------------------------
@dataclass
class Replicas:
    a: TestClient
    b: TestClient
    prefix: str
    settings: Settings


@pytest.fixture
def replicas(
    settings: Settings, engine: Engine, mlflow_proxy: RecordingProxy, redis_url: str
) -> Iterator[Replicas]:
    """Two gateways sharing one Redis under a prefix of their own, signing with one secret."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    shared = lineage_settings(
        settings,
        mlflow_proxy.url,
        redis_url=SecretStr(redis_url),
        redis_prefix=prefix,
        redis_timeout_s=0.5,
        redis_signing_key=SecretStr(SECRET.decode()),
    )
    with (
        TestClient(create_app(shared), raise_server_exceptions=False) as a,
        TestClient(create_app(shared), raise_server_exceptions=False) as b,
    ):
        yield Replicas(a, b, prefix, shared)


def metric(client: TestClient, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def lineages(client: TestClient, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """Each artifact's (status, run id), asked of one replica."""
    found = {}
    for artifact_id in ids:
        response = client.post(
            "/graphql",
            json={
                "query": "query($id: Int!) { artifact(id: $id) { lineage { status runId } } }",
                "variables": {"id": artifact_id},
            },
        )
        lineage = response.json()["data"]["artifact"]["lineage"]
        found[artifact_id] = (lineage["status"], lineage["runId"])
    return found


HOSTILE = ["unsigned", "substituted", "forged", "truncated", "oversized", "wrong-type", "lease"]


def plant(client: Any, kind: str, key: bytes, prefix: str, decoy: bytes) -> None:
    """Replace the signed entry under `key` with a hostile one of `kind`."""
    value = client.get(key)
    if kind == "lease":
        # No entry to read, and the search's lease held, without a TTL, by nobody.
        client.delete(key)
        name = key.decode().removeprefix(prefix)
        client.set(f"{prefix}lease:lineage:{name}", b"held-by-nobody")
        return
    client.delete(key)
    decoy_json = decoy.split(b":", 3)[3] if decoy.startswith(b"v1:") else decoy
    if kind == "unsigned":
        client.set(key, decoy_json, px=60_000)
    elif kind == "substituted":
        client.set(key, decoy, px=60_000)  # another workflow's entry, signed, verbatim
    elif kind == "forged":
        client.set(key, b"v1:%d:%s:%s" % (int(time.time() * 1000) + 60_000, b"0" * 64, decoy_json))
    elif kind == "truncated":
        client.set(key, value[:-3], px=60_000)
    elif kind == "oversized":
        client.set(key, value + b" " * (2 * CAP), px=60_000)
    elif kind == "wrong-type":
        client.hset(key, mapping={"run": decoy_json})
    else:
        raise AssertionError(kind)


def test_after_ten_hostile_entries_of_each_kind_lineage_still_hydrates_and_health_answers(
    replicas: Replicas,
    insert: Any,
    mlflow: MlflowClient,
    experiment: str,
    redis_server: RedisServer,
) -> None:
    a, b, prefix = replicas.a, replicas.b, replicas.prefix
    decoy_workflow, after_workflow = (f"wf-{name}-{uuid.uuid4().hex[:8]}" for name in "da")
    decoy_run = make_run(mlflow, experiment, workflow_id=decoy_workflow)
    decoy_row = insert(workflow_id=decoy_workflow)
    assert lineages(a, [decoy_row]) == {decoy_row: ("HYDRATED", decoy_run)}
    with redis_server.client() as client:
        digest = hashlib.sha256(decoy_workflow.encode()).hexdigest()[:40]
        decoy_key = f"{prefix}lineage:workflow:{digest}"
        decoy = client.get(decoy_key)
        assert decoy is not None
    for kind in HOSTILE:
        rows: dict[int, str] = {}
        for _ in range(10):
            workflow = f"wf-{kind}-{uuid.uuid4().hex[:8]}"
            rows[insert(workflow_id=workflow)] = make_run(mlflow, experiment, workflow_id=workflow)
        expected = {row: ("HYDRATED", run) for row, run in rows.items()}
        with redis_server.client() as client:
            before = set(client.keys(f"{prefix}lineage:workflow:*"))
        assert lineages(a, list(rows)) == expected
        with redis_server.client() as client:
            planted = set(client.keys(f"{prefix}lineage:workflow:*")) - before
            assert len(planted) == 10
            for key in planted:
                plant(client, kind, key, prefix, decoy)
        label = "lease" if kind == "lease" else "lineage"
        refused = metric(b, "gateway_redis_rejected_total", kind=label)
        assert lineages(b, list(rows)) == expected, kind
        assert metric(b, "gateway_redis_rejected_total", kind=label) == refused + 10, kind
        with redis_server.client() as client:
            # Each hostile entry was deleted; what is there now is B's own, signed.
            for key in planted:
                assert client.get(key).startswith(b"v1:"), kind
    # A legitimate run and a legacy row, after all that, on both replicas.
    run_id = make_run(mlflow, experiment)
    by_run = insert(meta={"mlflow_run_id": run_id})
    legacy_run = make_run(mlflow, experiment, workflow_id=after_workflow)
    legacy = insert(workflow_id=after_workflow)
    assert lineages(a, [by_run, legacy]) == {
        by_run: ("HYDRATED", run_id),
        legacy: ("HYDRATED", legacy_run),
    }
    assert lineages(b, [by_run, legacy]) == lineages(a, [by_run, legacy])
    assert lineages(b, [decoy_row]) == {decoy_row: ("HYDRATED", decoy_run)}
    # Redis stayed in use throughout: nothing hostile counted as Redis failing.
    for replica in (a, b):
        assert metric(replica, "gateway_redis_errors_total") == 0
        assert replica.get("/readyz").json()["redis"] == "ok"
        started = time.monotonic()
        assert replica.get("/healthz").json() == {"status": "ok"}
        assert time.monotonic() - started < 4 * replicas.settings.redis_timeout_s


def test_a_chart_substituted_under_another_charts_key_is_drawn_again_not_served(
    replicas: Replicas, insert: Any, redis_server: RedisServer
) -> None:
    a, b, prefix = replicas.a, replicas.b, replicas.prefix

    def chart(seed: int) -> int:
        snapshot = random_walk_bars(60, seed=seed)
        return int(insert(artifact_type="chart", meta={"market_data_snapshot": snapshot}))

    three, thirteen = chart(3), chart(13)
    with redis_server.client() as client:
        drawn = {}
        for row in (three, thirteen):
            before = set(client.keys(f"{prefix}chart:*"))
            response = a.get(f"/api/artifacts/{row}/image")
            assert response.status_code == 200
            (key,) = set(client.keys(f"{prefix}chart:*")) - before
            drawn[row] = (key, response.content)
        (key3, png3), (key13, png13) = drawn[three], drawn[thirteen]
        assert png3 != png13
        client.delete(key3)
        client.hset(key3, mapping=client.hgetall(key13))
    refused = metric(b, "gateway_redis_rejected_total", kind="chart")
    served = b.get(f"/api/artifacts/{three}/image")
    assert served.status_code == 200
    assert served.content == png3  # drawn again on B, not chart 13's bytes
    assert metric(b, "gateway_redis_rejected_total", kind="chart") == refused + 1
    again = b.get(
        f"/api/artifacts/{three}/image", headers={"If-None-Match": served.headers["etag"]}
    )
    assert again.status_code == 304
    assert b.get(f"/api/artifacts/{thirteen}/image").content == png13


def test_a_replica_signs_what_it_shares_with_the_fleets_key(
    replicas: Replicas, insert: Any, redis_server: RedisServer
) -> None:
    row = insert(artifact_type="chart", meta={"market_data_snapshot": random_walk_bars(60, seed=7)})
    drawn = replicas.a.get(f"/api/artifacts/{row}/image")
    assert drawn.status_code == 200

    with redis_server.client() as client:
        keys = [key.decode() for key in client.keys(f"{replicas.prefix}chart:*")]

    async def read_back() -> list[bytes | None]:
        fleet = SharedStore(
            url=redis_server.url,
            prefix=replicas.prefix,
            timeout_s=0.5,
            metrics=Metrics(),
            max_chart_bytes=CAP,
            signing_key=SECRET,
        )
        try:
            return [await fleet.get_png(key) for key in keys]
        finally:
            await closing(fleet)

    # GATEWAY_REDIS_SIGNING_KEY, not the development key, signed it.
    assert asyncio.run(read_back()) == [drawn.content]
