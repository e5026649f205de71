"""Scale-out benchmark: 1 replica, 3 replicas alone, 3 replicas sharing a real `redis-server`.

Each setup gets a fresh SQLite database (charts never rendered, a page of 50 legacy rows over
10 workflows) and real `gateway serve` processes in front of a real `mlflow server` behind a
request-counting proxy. Figures per setup:
- renders per distinct chart: 6 new charts, each asked for by 30 concurrent requests spread over
  the replicas (sum of `gateway_chart_render_seconds_count` over the replicas' /metrics);
- MLflow searches per distinct page: the same legacy page read once on each of 3 replicas (one
  replica: three times), counted at the proxy;
- first view on replica B after replica A served it: 20 new charts, each drawn on A, then timed
  on B (p50/p99). With one replica, B is A: the figure is a cache hit, the floor the shared tier
  aims at.
Ratios are against the one-replica setup measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from chartkit import random_walk_bars
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from tests.faults import RecordingProxy
from tests.servers import GatewayProcess, MlflowServer, RedisServer

PAGE = "{ artifacts(first: 50) { edges { node { id lineage { status runId reason } } } } }"
SEARCHES = "/api/2.0/mlflow/runs/search"


@dataclass
class Setup:
    name: str
    replicas: int
    redis: bool


@dataclass
class Figures:
    renders_per_chart: float
    searches_per_page: float
    first_view_p50_ms: float
    first_view_p99_ms: float


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def render_count(replicas: list[GatewayProcess]) -> float:
    total = 0.0
    for replica in replicas:
        text = httpx.get(f"{replica.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gateway_chart_render_seconds_count":
                    total += sample.value
    return total


@contextmanager
def gateways(
    root: Path, setup: Setup, mlflow_url: str, redis_url: str | None
) -> Iterator[tuple[list[GatewayProcess], Session, list[str]]]:
    """The setup's replicas over a fresh database holding the legacy page; yields them, a
    session to add charts with, and the page's workflow ids (their runs made by the caller)."""
    database = f"sqlite:///{root / 'gw.db'}"
    engine = make_engine(database)
    init_db(engine)
    workflows = [f"wf-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
    env = {
        "DATABASE_URL": database,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "GATEWAY_LOG_LEVEL": "error",
        "GATEWAY_ANSWER_CACHE_S": "0",
        "GATEWAY_MLFLOW_TIMEOUT_S": "10",
    }
    if redis_url is not None:
        env |= {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": f"{setup.name}:"}
    with ExitStack() as stack, Session(engine) as session:
        stack.callback(engine.dispose)
        session.add_all(
            Artifact(name=f"legacy {i}", artifact_type="llm", workflow_id=workflows[i % 10])
            for i in range(50)
        )
        session.commit()
        replicas = []
        for index in range(setup.replicas):
            home = root / f"replica-{index}"
            home.mkdir()
            replicas.append(stack.enter_context(GatewayProcess(home, env)))
        for replica in replicas:
            replica.wait_until_listening()
            while httpx.get(f"{replica.url}/readyz", timeout=10).status_code != 200:
                time.sleep(0.1)
        yield replicas, session, workflows


def add_charts(session: Session, count: int, seed: int) -> list[int]:
    rows = [
        Artifact(
            name=f"chart {seed + i}",
            artifact_type="chart",
            meta={"market_data_snapshot": random_walk_bars(120, seed=seed + i)},
        )
        for i in range(count)
    ]
    session.add_all(rows)
    session.commit()
    return [row.id for row in rows if row.id is not None]


def measure(setup: Setup, root: Path, mlflow: MlflowServer, redis: RedisServer) -> Figures:
    client = MlflowClient(tracking_uri=mlflow.url)
    experiment = str(client.create_experiment(f"bench-{uuid.uuid4().hex[:8]}"))
    proxy = RecordingProxy(mlflow.url).start()
    try:
        with gateways(root, setup, proxy.url, redis.url if setup.redis else None) as (
            replicas,
            session,
            workflows,
        ):
            for workflow in workflows:
                run = client.create_run(experiment, tags={"workflow_id": workflow})
                client.set_terminated(run.info.run_id)
            a, b = replicas[0], replicas[-1]

            # Renders per distinct chart.
            charts = add_charts(session, 6, seed=1000)
            before = render_count(replicas)
            jobs = [(replicas[i % len(replicas)].url, chart) for chart in charts for i in range(30)]
            with ThreadPoolExecutor(max_workers=30) as pool:
                statuses = list(
                    pool.map(
                        lambda job: (
                            httpx.get(
                                f"{job[0]}/api/artifacts/{job[1]}/image", timeout=120
                            ).status_code
                        ),
                        jobs,
                    )
                )
            assert set(statuses) == {200}, statuses
            renders = (render_count(replicas) - before) / len(charts)

            # MLflow searches per distinct page.
            proxy.reset()
            for index in range(3):
                replica = replicas[index % len(replicas)]
                body = httpx.post(f"{replica.url}/graphql", json={"query": PAGE}, timeout=60)
                edges = body.json()["data"]["artifacts"]["edges"]
                assert all(e["node"]["lineage"]["status"] == "HYDRATED" for e in edges), body.text
            searches = len(proxy.paths(SEARCHES))

            # First view on B after A served it.
            # Kept-alive clients: a new httpx client per request costs more than the answer.
            latencies = []
            with httpx.Client(timeout=60) as on_a, httpx.Client(timeout=60) as on_b:
                assert on_a.get(f"{a.url}/healthz").is_success
                assert on_b.get(f"{b.url}/healthz").is_success
                for chart in add_charts(session, 20, seed=5000):
                    assert on_a.get(f"{a.url}/api/artifacts/{chart}/image").is_success
                    started = time.perf_counter()
                    response = on_b.get(f"{b.url}/api/artifacts/{chart}/image")
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.is_success
            return Figures(renders, searches, statistics.median(latencies), pct(latencies, 0.99))
    finally:
        proxy.stop()


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    setups = [
        Setup("one", 1, redis=False),
        Setup("three", 3, redis=False),
        Setup("three-redis", 3, redis=True),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mlflow = MlflowServer(root / "mlflow")
        mlflow.start()
        redis = RedisServer(root / "redis").start()
        try:
            figures = {}
            for setup in setups:
                (root / setup.name).mkdir()
                figures[setup.name] = measure(setup, root / setup.name, mlflow, redis)
        finally:
            redis.stop()
            mlflow.stop()
    base = figures["one"]
    rows = [
        ("renders per distinct chart", "renders_per_chart", "{:.2f}"),
        ("MLflow searches per distinct page", "searches_per_page", "{:.0f}"),
        ("first view on B after A, p50 (ms)", "first_view_p50_ms", "{:.1f}"),
        ("first view on B after A, p99 (ms)", "first_view_p99_ms", "{:.1f}"),
    ]
    print("| figure | 1 replica (baseline) | 3 replicas | ratio | 3 replicas + Redis | ratio |")
    print("|---|---|---|---|---|---|")
    for label, field, fmt in rows:
        one = getattr(base, field)
        three = getattr(figures["three"], field)
        shared = getattr(figures["three-redis"], field)
        print(
            f"| {label} | {fmt.format(one)} | {fmt.format(three)} | {three / one:.2f}x "
            f"| {fmt.format(shared)} | {shared / one:.2f}x |"
        )


if __name__ == "__main__":
    main()
