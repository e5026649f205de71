"""Benchmark: lineage hydration cost against a real `mlflow server`, and repair throughput.

A page of 100 legacy artifacts (5 workflows) read through GraphQL with a cold cache (fresh
app) and a warm cache, against the baseline: the same page with lineage stored on the rows.
The cold read (a new app, once started: it reads MLflow's experiment list at start-up) is also
set against its floor: the stored page plus the MLflow requests the cold read made, sent to
MLflow in one concurrent wave without a gateway (through the same recording proxy). Prints
medians, ratios and the MLflow requests each read made; then repairs 10,000 rows on SQLite and
(when reachable, in a schema of its own) PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from mlflow.tracking import MlflowClient
from sqlmodel import Session
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.observability import Metrics, configure_logging
from gateway.repair import repair_lineage
from gateway.services import build_resolver
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.servers import MlflowServer, postgres_schema, postgres_unreachable_reason
from tests.support import experiments_listed

BATCH = 500
PAGE = "{ artifacts(first: 100) { edges { node { id runId experimentId lineage { status } } } } }"


def seed(url: str, rows: list[Artifact]) -> None:
    engine = make_engine(url)
    init_db(engine)
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    engine.dispose()


def read_page(client: TestClient) -> None:
    body = client.post("/graphql", json={"query": PAGE}).json()
    assert "errors" not in body, body
    assert len(body["data"]["artifacts"]["edges"]) == 100


def seed_pages(root: Path, mlflow: MlflowClient) -> tuple[str, str, list[str]]:
    """Two databases with the same 100 rows over 5 workflows: legacy and with stored ids."""
    experiment = str(mlflow.create_experiment(f"bench-{uuid.uuid4().hex[:6]}"))
    workflows = [f"wf-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    runs = {
        wf: mlflow.create_run(experiment, tags={"workflow_id": wf}).info.run_id for wf in workflows
    }
    legacy_url = f"sqlite:///{root / 'legacy.db'}"
    stored_url = f"sqlite:///{root / 'stored.db'}"
    seed(
        legacy_url,
        [
            Artifact(name=f"a{i}", artifact_type="llm", workflow_id=workflows[i % 5])
            for i in range(100)
        ],
    )
    seed(
        stored_url,
        [
            Artifact(
                name=f"a{i}",
                artifact_type="llm",
                workflow_id=workflows[i % 5],
                run_id=runs[workflows[i % 5]],
                experiment_id=experiment,
            )
            for i in range(100)
        ],
    )
    return legacy_url, stored_url, workflows


def direct_wave_s(upstream: str, asked: list[tuple[str, str, bytes]]) -> float:
    """Seconds to send these requests to MLflow (not through a gateway), all at once, on new
    connections."""

    async def wave() -> float:
        async with httpx.AsyncClient(base_url=upstream, timeout=30) as client:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    client.request(
                        method, target, content=body, headers={"content-type": "application/json"}
                    )
                    for method, target, body in asked
                )
            )
            elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
        return elapsed

    return asyncio.run(wave())


def page_figures(
    base: Settings,
    proxy: RecordingProxy,
    legacy_url: str,
    stored_url: str,
    repeat: int,
) -> None:
    """Cold and warm legacy pages against the stored page; medians, ratios, MLflow requests."""

    def timed(client: TestClient) -> tuple[float, int]:
        proxy.reset()
        started = time.perf_counter()
        read_page(client)
        return time.perf_counter() - started, len(proxy.paths("/api/2.0/mlflow/"))

    def app(url: str) -> TestClient:
        return TestClient(create_app(base.model_copy(update={"database_url": url})))

    # Each figure's samples alternate with its baseline's, so a slow spell of this shared
    # machine (the MLflow server, the proxy and this process share 2 cores) lands on both.
    cold, cold_requests, direct = [], [], []
    asked: list[tuple[str, str, bytes]] = []
    for _ in range(repeat):
        with app(legacy_url) as c:
            # The app's own start-up (its experiment listing) is not the read's cost.
            c.get("/readyz")
            experiments_listed(c, timeout_s=30)
            seconds, requests = timed(c)
        cold.append(seconds)
        cold_requests.append(requests)
        # What this cold read asked MLflow, sent again directly: its floor. Through the same
        # recording proxy as the gateway: the two differ in the gateway only.
        asked = [
            (method, target, body)
            for (method, _, body), target in zip(proxy.requests, proxy.targets, strict=True)
            if target.startswith("/api/2.0/mlflow/")
        ]
        direct.append(direct_wave_s(proxy.url, asked))
    warm_samples, stored_samples = [], []
    with app(legacy_url) as legacy, app(stored_url) as stored:
        timed(legacy)
        timed(stored)
        for _ in range(repeat):
            warm_samples.append(timed(legacy))
            stored_samples.append(timed(stored))
    warm = statistics.median(s for s, _ in warm_samples)
    baseline = statistics.median(s for s, _ in stored_samples)
    cold_median = statistics.median(cold)
    floor = baseline + statistics.median(direct)
    print("page of 100 artifacts via GraphQL (in-process ASGI), medians of", repeat)
    print(f"{'case':<34} {'median ms':>10} {'vs stored':>10} {'MLflow requests':>16}")
    print(
        f"{'stored lineage (baseline)':<34} {baseline * 1000:>10.1f} {1.0:>10.2f} "
        f"{max(r for _, r in stored_samples):>16}"
    )
    print(
        f"{'legacy, cold cache (new app)':<34} {cold_median * 1000:>10.1f} "
        f"{cold_median / baseline:>10.2f} {max(cold_requests):>16}"
    )
    print(
        f"{'legacy, warm cache':<34} {warm * 1000:>10.1f} "
        f"{warm / baseline:>10.2f} {max(r for _, r in warm_samples):>16}"
    )
    print(
        f"floor of a cold read: stored page + its {len(asked)} MLflow requests sent directly in "
        f"one concurrent wave = {floor * 1000:.1f} ms; legacy cold = {cold_median / floor:.2f}x "
        "that floor"
    )


def repair_figure(
    base: Settings, proxy: RecordingProxy, repair_url: str, workflows: list[str], rows: int
) -> None:
    """Rows per second of a repair over `rows` legacy rows, the MLflow requests it made, and
    the seconds it spent waiting for them (one search per workflow: MLflow has no IN on tags)."""
    seed(
        repair_url,
        [
            Artifact(name=f"r{i}", artifact_type="llm", workflow_id=workflows[i % len(workflows)])
            for i in range(rows)
        ],
    )
    engine = make_engine(repair_url)
    settings = base.model_copy(update={"database_url": repair_url})

    metrics = Metrics()
    first: list[float] = []

    def first_batch_done(_report: object) -> None:
        if not first:
            first.append(time.perf_counter())

    async def repair() -> int:
        resolver = build_resolver(settings, metrics)
        try:
            report = await repair_lineage(
                engine=engine, resolver=resolver, batch_size=BATCH, on_batch=first_batch_done
            )
        finally:
            await resolver.backend.aclose()
        return report.repaired

    proxy.reset()
    started = time.perf_counter()
    repaired = asyncio.run(repair())
    elapsed = time.perf_counter() - started
    # The first batch holds every workflow's search (later batches find them cached).
    first_batch_s, first_rows = first[0] - started, min(BATCH, repaired)
    database = engine.dialect.name
    print(
        f"repair ({database}): {repaired} rows over {len(workflows)} workflows in {elapsed:.2f} s "
        f"= {repaired / elapsed:,.0f} rows/s (target >= 2,000); MLflow requests: "
        f"{len(proxy.paths('/api/2.0/mlflow/'))}; the first batch (every workflow's search) "
        f"took {first_batch_s:.2f} s, the rest ran at "
        f"{(repaired - first_rows) / (elapsed - first_batch_s):,.0f} rows/s"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--repair-rows", type=int, default=10_000)
    args = parser.parse_args()
    configure_logging(log_format="json", level="error")
    root = Path(tempfile.mkdtemp(prefix="bench-lineage-"))
    server = MlflowServer(root / "mlflow")
    server.start()
    proxy = RecordingProxy(server.url).start()
    try:
        mlflow = MlflowClient(tracking_uri=server.url)
        legacy_url, stored_url, workflows = seed_pages(root, mlflow)
        # Kept answers off: each read is the lineage work itself, not a dictionary lookup.
        base = Settings(mlflow_tracking_uri=proxy.url, mlflow_timeout_s=5.0, answer_cache_s=0)
        page_figures(base, proxy, legacy_url, stored_url, args.repeat)
        repair_figure(base, proxy, f"sqlite:///{root / 'repair.db'}", workflows, args.repair_rows)
        problem = postgres_unreachable_reason()
        if problem is not None:
            print(f"repair (postgresql): not measured: {problem}")
        else:
            with postgres_schema() as url:
                repair_figure(base, proxy, url, workflows, args.repair_rows)
    finally:
        proxy.stop()
        server.stop()


if __name__ == "__main__":
    main()
