"""Three real `gateway serve` replicas sharing a real `redis-server`: the real MLflow server
behind a request-counting proxy, moto as MinIO behind another. Work done on one replica is not
done again on the others; Redis going away (killed, then silent) costs no request, and sharing
comes back with it."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session

from chartkit import random_walk_bars
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from tests.faults import RecordingProxy, SilentListener
from tests.gateway.image_support import STORED_PNG, put
from tests.servers import GatewayProcess, MlflowServer, RedisServer, free_port, s3_client
from tests.support import make_run, require_redis_server

LINEAGE_PAGE = "{ artifacts(first: 50) { edges { node { id lineage { status runId reason } } } } }"


@dataclass
class Cluster:
    replicas: list[GatewayProcess]
    engine: Engine
    mlflow: RecordingProxy
    s3: RecordingProxy
    bucket: str

    def add(self, **fields: Any) -> int:
        with Session(self.engine) as session:
            row = Artifact(name=fields.pop("name", "row"), **fields)
            session.add(row)
            session.commit()
            assert row.id is not None
            return row.id

    def add_chart(self, seed: int, **fields: Any) -> int:
        snapshot = random_walk_bars(60, seed=seed)
        return self.add(artifact_type="chart", meta={"market_data_snapshot": snapshot}, **fields)


def start_cluster(
    root: Path, redis_url: str, mlflow_url: str, s3_endpoint: str, replicas: int = 3
) -> Iterator[Cluster]:
    bucket = f"charts-{uuid.uuid4().hex[:10]}"
    s3_client(s3_endpoint).make_bucket(bucket)
    database = f"sqlite:///{root / 'gw.db'}"
    engine = make_engine(database)
    init_db(engine)  # before the replicas start: they must not race to create the tables
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        mlflow = RecordingProxy(mlflow_url).start()
        stack.callback(mlflow.stop)
        s3 = RecordingProxy(f"http://{s3_endpoint}").start()
        stack.callback(s3.stop)
        env = {
            "DATABASE_URL": database,
            "MLFLOW_TRACKING_URI": mlflow.url,
            "MINIO_ENDPOINT": s3.url.removeprefix("http://"),
            "MINIO_ACCESS_KEY": "testing",
            "MINIO_SECRET_KEY": "testing",
            "MINIO_ALLOWED_BUCKETS": bucket,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}:",
            # Every read does its own work here: the subject is what replicas share.
            "GATEWAY_ANSWER_CACHE_S": "0",
            # The session's MLflow server (one worker) is slow to search on a busy machine; the
            # subject is how many searches are made, not how fast.
            "GATEWAY_MLFLOW_TIMEOUT_S": "10",
            "GATEWAY_LOG_FORMAT": "json",
        }
        gateways = []
        for index in range(replicas):
            (root / f"replica-{index}").mkdir()
            gateways.append(stack.enter_context(GatewayProcess(root / f"replica-{index}", env)))
        for gateway in gateways:
            gateway.wait_until_listening()
            deadline = time.monotonic() + 120
            while httpx.get(f"{gateway.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "a replica never became ready"
                time.sleep(0.1)
        yield Cluster(gateways, engine, mlflow, s3, bucket)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    mlflow_server: MlflowServer,
    s3_server: str,
) -> Iterator[Cluster]:
    yield from start_cluster(
        tmp_path_factory.mktemp("replicas"), redis_server.url, mlflow_server.url, s3_server
    )


@pytest.fixture(autouse=True)
def _flushed(cluster: Cluster, redis_url: str) -> None:
    """Every test starts from an empty Redis (`redis_url` flushes it), replicas running."""


def metric(replica: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def renders(cluster: Cluster) -> float:
    return sum(metric(r, "gateway_chart_render_seconds_count") for r in cluster.replicas)


def spread(cluster: Cluster, paths: list[str], *, timeout_s: float = 60) -> list[httpx.Response]:
    """GET each path on the replicas in turn, all at once."""

    def get(job: tuple[int, str]) -> httpx.Response:
        index, path = job
        replica = cluster.replicas[index % len(cluster.replicas)]
        return httpx.get(f"{replica.url}{path}", timeout=timeout_s)

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(get, enumerate(paths)))


def test_thirty_requests_for_one_new_chart_over_three_replicas_render_it_once(
    cluster: Cluster,
) -> None:
    chart = cluster.add_chart(seed=101)
    before = renders(cluster)
    responses = spread(cluster, [f"/api/artifacts/{chart}/image"] * 30)
    assert [r.status_code for r in responses] == [200] * 30
    assert len({r.content for r in responses}) == 1
    assert len({r.headers["etag"] for r in responses}) == 1
    assert responses[0].content.startswith(b"\x89PNG")
    assert renders(cluster) - before == 1


def test_a_list_read_on_one_replica_costs_the_others_no_mlflow_search(
    cluster: Cluster, mlflow_server: MlflowServer
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = str(client.create_experiment(f"exp-{uuid.uuid4().hex[:10]}"))
    runs = {}
    for index in range(3):
        workflow = f"wf-rep-{uuid.uuid4().hex[:6]}-{index}"
        runs[workflow] = make_run(client, experiment, workflow_id=workflow)
        cluster.add(name=f"legacy {index}", artifact_type="signal", workflow_id=workflow)
    first = httpx.post(
        f"{cluster.replicas[0].url}/graphql", json={"query": LINEAGE_PAGE}, timeout=60
    ).json()
    hydrated = {
        node["node"]["lineage"]["runId"]
        for node in first["data"]["artifacts"]["edges"]
        if node["node"]["lineage"]["status"] == "HYDRATED"
    }
    assert set(runs.values()) <= hydrated, json.dumps(first)
    cluster.mlflow.reset()
    for replica in cluster.replicas[1:]:
        again = httpx.post(f"{replica.url}/graphql", json={"query": LINEAGE_PAGE}, timeout=60)
        assert again.json() == first
    assert cluster.mlflow.paths("/api/2.0/mlflow/runs/search") == []


def test_a_proxied_minio_object_is_fetched_once_across_replicas(cluster: Cluster) -> None:
    key = f"AAPL/{uuid.uuid4().hex[:8]}/chart.png"
    put(cluster.s3.url.removeprefix("http://"), cluster.bucket, key, STORED_PNG)
    chart = cluster.add(
        name="stored",
        artifact_type="chart",
        chart_data={"minio_url": f"s3://{cluster.bucket}/{key}"},
    )
    cluster.s3.reset()
    responses = spread(cluster, [f"/api/artifacts/{chart}/image"] * 9)
    assert {r.status_code for r in responses} == {200}
    assert {r.content for r in responses} == {STORED_PNG}
    path = f"/{cluster.bucket}/{key}"
    assert [(method, p) for method, p, _ in cluster.s3.requests if p == path] == [("GET", path)]


def test_a_corrupted_shared_chart_is_not_served(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    chart = cluster.add_chart(seed=202)
    first, other = cluster.replicas[0], cluster.replicas[1]
    served = httpx.get(f"{first.url}/api/artifacts/{chart}/image", timeout=60)
    assert served.status_code == 200
    with redis_server.client() as client:
        keys = [k for k in client.keys("*chart:r-*") if client.hget(k, "png") == served.content]
        assert len(keys) == 1
        client.hset(keys[0], "png", served.content[:-8] + b"corrupt!")
    rejected = metric(other, "gateway_redis_rejected_total", kind="chart")
    again = httpx.get(f"{other.url}/api/artifacts/{chart}/image", timeout=60)
    assert again.status_code == 200
    assert again.content == served.content  # drawn again, not the corrupted bytes
    assert metric(other, "gateway_redis_rejected_total", kind="chart") == rejected + 1


# -- Redis killed, then silent, then back -------------------------------------------------------
def redis_events(replica: GatewayProcess) -> list[str]:
    events = []
    for line in replica.output_lines():
        try:
            event = json.loads(line).get("event", "")
        except (json.JSONDecodeError, AttributeError):
            continue
        if event in ("redis.unavailable", "redis.available"):
            events.append(event)
    return events


def test_redis_killed_then_silent_costs_no_request_and_sharing_resumes_when_it_returns(
    tmp_path: Path, mlflow_server: MlflowServer, s3_server: str
) -> None:
    require_redis_server()
    port = free_port()
    redis = RedisServer(tmp_path / "redis", port=port).start()
    clusters = start_cluster(tmp_path / "cluster", redis.url, mlflow_server.url, s3_server)
    cluster = next(clusters)
    # Each replica draws a chart first. The subject is Redis failing, not a cold replica's
    # first render, which waits for its forkserver's imports: on a slow 2-core machine three
    # replicas importing chartkit at once took a first render past its 10 s timeout.
    warm_seeds = iter(range(3000, 3100))
    for replica in cluster.replicas:
        warm_until = time.monotonic() + 120
        while True:
            chart = cluster.add_chart(seed=next(warm_seeds))  # a new chart: no remembered 503
            if httpx.get(f"{replica.url}/api/artifacts/{chart}/image", timeout=60).is_success:
                break
            assert time.monotonic() < warm_until, "a replica never drew its first chart"
    statuses: list[int] = []
    slowest = [0.0]
    stop = threading.Event()
    seeds = iter(range(1000, 2000))
    lock = threading.Lock()

    def keep_asking(index: int) -> None:
        # New charts all along: each needs Redis (read, lease, publish) or local work.
        replica = cluster.replicas[index % 3]
        while not stop.is_set():
            with lock:
                chart = cluster.add_chart(seed=next(seeds))
            started = time.monotonic()
            response = httpx.get(f"{replica.url}/api/artifacts/{chart}/image", timeout=60)
            with lock:
                statuses.append(response.status_code)
                slowest[0] = max(slowest[0], time.monotonic() - started)

    silent: SilentListener | None = None
    clients = [threading.Thread(target=keep_asking, args=(i,)) for i in range(3)]
    try:
        for client in clients:
            client.start()
        time.sleep(2)
        redis.kill()  # mid-run
        time.sleep(3)
        silent = SilentListener(port)  # accepts, never answers
        time.sleep(4)
        silent.close()
        silent = None
        redis = RedisServer(tmp_path / "redis", port=port).start()
        time.sleep(1)
        stop.set()
        for client in clients:
            client.join(timeout=120)
        assert statuses
        assert max(statuses) < 500
        # Each request kept its deadline: no request waited on a silent Redis for long.
        assert slowest[0] < 10
        errors = sum(metric(r, "gateway_redis_errors_total") for r in cluster.replicas)
        assert errors > 0
        # Sharing resumes by itself: once each replica sees Redis again, one render per chart.
        for replica in cluster.replicas:
            deadline = time.monotonic() + 30
            while httpx.get(f"{replica.url}/readyz", timeout=10).json()["redis"] != "ok":
                assert time.monotonic() < deadline, "a replica never saw Redis again"
                time.sleep(0.2)
        chart = cluster.add_chart(seed=99_999)
        before = renders(cluster)
        responses = spread(cluster, [f"/api/artifacts/{chart}/image"] * 30)
        assert {r.status_code for r in responses} == {200}
        assert renders(cluster) - before == 1
        # Logged once per change of state: never the same event twice in a row.
        for replica in cluster.replicas:
            events = redis_events(replica)
            assert events[:1] == ["redis.unavailable"]
            assert events[-1:] == ["redis.available"]
            assert all(a != b for a, b in itertools.pairwise(events))
    finally:
        stop.set()
        if silent is not None:
            silent.close()
        clusters.close()
        redis.stop()
