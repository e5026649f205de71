"""Load benchmark: `gateway serve --workers 2` under a mixed workload on loopback, and render soak.

Mixed workload at 48 concurrent clients, each with its own connection (bounded in time):
artifact lists of 50 with lineage, single artifacts, images with and without If-None-Match.
Reports requests/s, p50/p95/p99 per kind, errors, CPU per request on the server's and the
client's side, and worker RSS after warm-up and at the end. The baseline, measured in the same
run with the same client and load: a bare Starlette app (`_replay_app.py`, 2 uvicorn workers)
serving the gateway's own recorded answers (bodies and headers) from memory. The steady figure
is the median of rounds that alternate between the two servers (the client's own cost per
request drifts over minutes, and alternating gives both servers the same drift). Then the same
workload while 6 more clients keep asking for charts nobody has rendered yet (1,500 extra chart
rows of 300 bars): throughput, and p99 against the steady rounds'. Then renders N charts in a
row in one process and reports RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.db import make_engine
from gateway.demo import seed_demo_data
from gateway.models import Artifact
from gateway.observability import configure_logging
from tests.servers import free_port
from tests.support import tree_cpu_seconds

# Clients that ask for never-rendered charts in the disturbed run, and those charts' bars.
COLD_CLIENTS = 6
COLD_BARS = 300
KINDS = ("list", "artifact", "image", "image_304")

LIST = (
    "{ artifacts(first: 50) { edges { node { id name runId experimentId lineage { status } } } } }"
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Worker processes of the server (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmdline:
                found.append(int(entry.name))
    return found


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_load(
    url: str,
    *,
    clients: int,
    seconds: float,
    etags: dict[int, str],
    cold: Iterator[int] | None = None,
) -> tuple[dict[str, list[float]], int, float]:
    """The mixed workload; with `cold`, COLD_CLIENTS more clients each ask, one after the other,
    for the image of the next artifact of `cold` (charts nobody has rendered yet)."""
    latencies: dict[str, list[float]] = {"list": [], "artifact": [], "image": [], "image_304": []}
    if cold is not None:
        latencies["cold_image"] = []
    errors = 0
    failures: dict[str, int] = {}
    charts = sorted(etags)
    deadline = time.perf_counter() + seconds

    def own_client() -> httpx.AsyncClient:
        # Each client has its own connection, as each browser has: httpcore's pool scans all of
        # its connections on every request and response (about 3,000 `is_idle` calls per
        # response for 48 connections in one pool), which made the load generator's cost per
        # response depend on how responses arrived rather than on what they were.
        return httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))

    async def cold_worker(artifacts: Iterator[int]) -> None:
        async with own_client() as client:
            await cold_requests(client, artifacts)

    async def cold_requests(client: httpx.AsyncClient, artifacts: Iterator[int]) -> None:
        nonlocal errors
        for artifact_id in artifacts:
            if time.perf_counter() >= deadline:
                return
            started = time.perf_counter()
            try:
                r = await client.get(f"/api/artifacts/{artifact_id}/image")
                ok = r.status_code == 200 and r.headers.get("x-cache") == "miss"
                label = f"cold_image HTTP {r.status_code} x-cache {r.headers.get('x-cache')}"
            except httpx.HTTPError as exc:
                ok, label = False, f"cold_image {type(exc).__name__}"
            latencies["cold_image"].append(time.perf_counter() - started)
            if not ok:
                failures[label] = failures.get(label, 0) + 1
                errors += 1

    async def worker(seed: int) -> None:
        async with own_client() as client:
            await requests(client, random.Random(seed))

    async def requests(client: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            kind = rng.choice(["list", "artifact", "image", "image_304"])
            started = time.perf_counter()
            try:
                if kind == "list":
                    r = await client.post("/graphql", json={"query": LIST})
                    ok = r.status_code == 200 and "errors" not in r.json()
                elif kind == "artifact":
                    r = await client.get(f"/api/artifacts/{rng.randint(1, 36)}")
                    ok = r.status_code == 200
                else:
                    chart = rng.choice(charts)
                    headers = {"if-none-match": etags[chart]} if kind == "image_304" else {}
                    r = await client.get(f"/api/artifacts/{chart}/image", headers=headers)
                    ok = r.status_code == (304 if kind == "image_304" else 200)
            except httpx.HTTPError as exc:
                ok, r = False, None
                label = f"{kind} {type(exc).__name__}"
                failures[label] = failures.get(label, 0) + 1
                print(f"  {label} after {time.perf_counter() - started:.2f} s: {exc!r}")
            latencies[kind].append(time.perf_counter() - started)
            if not ok and r is not None:
                label = f"{kind} HTTP {r.status_code}"
                failures[label] = failures.get(label, 0) + 1
            errors += not ok

    started = time.perf_counter()
    cold_workers = [cold_worker(cold) for _ in range(COLD_CLIENTS)] if cold is not None else []
    await asyncio.gather(*(worker(i) for i in range(clients)), *cold_workers)
    if failures:
        print("failures:", failures)
    return latencies, errors, time.perf_counter() - started


def answering(url: str) -> str:
    """`url`, once its /healthz answers (at most about 30 s)."""
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return url


def seed_cold_charts(engine: Engine, count: int) -> list[int]:
    """`count` chart artifacts like the demo's first chart (its lineage, no MinIO object), each
    with a snapshot of its own: charts nobody has rendered. Returns their ids."""
    with Session(engine) as session:
        model = session.exec(
            select(Artifact).where(Artifact.artifact_type == "chart").order_by(col(Artifact.id))
        ).first()
        assert model is not None, "the demo data has no chart"
        rows = [
            Artifact(
                name=f"cold chart {i}",
                artifact_type="chart",
                symbol=model.symbol,
                workflow_id=model.workflow_id,
                run_id=model.run_id,
                experiment_id=model.experiment_id,
                meta={"market_data_snapshot": random_walk_bars(COLD_BARS, seed=10_000 + i)},
                created_at=model.created_at,
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows if row.id is not None]


def start_gateway(
    root: Path, *, cold_charts: int = 0
) -> tuple[subprocess.Popen[bytes], str, list[int]]:
    """`gateway serve --workers 2` on demo data (embedded defaults) and `cold_charts` more
    charts, once /healthz answers; and the ids of those charts."""
    db_url, mlflow_uri = f"sqlite:///{root / 'gw.db'}", f"sqlite:///{root / 'mlflow.db'}"
    engine = make_engine(db_url)
    seed_demo_data(engine=engine, tracking_uri=mlflow_uri)
    cold = seed_cold_charts(engine, cold_charts) if cold_charts else []
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "GATEWAY_LOG_LEVEL": "error",
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),  # as in the Dockerfile
    }
    gateway = Path(sys.executable).with_name("gateway")
    server = subprocess.Popen(
        [str(gateway), "serve", "--workers", "2", "--port", str(port)],
        env=env,
    )
    return server, answering(f"http://127.0.0.1:{port}"), cold


def record_answers(url: str, etags: dict[int, str], path: Path) -> None:
    """The gateway's answers to every request of the workload, for the replay baseline."""
    recording: dict[str, tuple[str, dict[str, str]]] = {}

    def keep(key: str, response: httpx.Response) -> None:
        # Every header the gateway sent, but those the server writes for each response.
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in {"date", "server", "content-length"}
        }
        recording[key] = (base64.b64encode(response.content).decode(), headers)

    keep("list", httpx.post(f"{url}/graphql", json={"query": LIST}, timeout=60))
    for artifact_id in range(1, 37):
        keep(f"artifact {artifact_id}", httpx.get(f"{url}/api/artifacts/{artifact_id}", timeout=60))
    for chart in etags:
        keep(f"image {chart}", httpx.get(f"{url}/api/artifacts/{chart}/image", timeout=60))
    path.write_text(json.dumps(recording))


def start_baseline(recording: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The replay app with 2 uvicorn workers and the gateway's socket options, once it answers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_replay_app.py")), str(port)],
        env={**os.environ, "BENCH_REPLAY": str(recording)},
        cwd=Path(__file__).resolve().parents[1],
    )
    return server, answering(f"http://127.0.0.1:{port}")


def warm_up(url: str, *, clients: int, seconds: float) -> dict[int, str]:
    """Every chart's ETag; then load rounds until one passes without errors (at most 4)."""
    charts = [
        i
        for i in range(1, 37)
        if httpx.get(f"{url}/api/artifacts/{i}", timeout=60).json()["artifact_type"] == "chart"
    ]
    etags = {
        i: httpx.get(f"{url}/api/artifacts/{i}/image", timeout=60).headers["etag"] for i in charts
    }
    # Each worker must have rendered every chart once and filled its caches.
    for round_ in range(1, 5):
        _, warm_errors, _ = asyncio.run(
            run_load(url, clients=clients, seconds=seconds, etags=etags)
        )
        print(f"warm-up round {round_}: {warm_errors} errors")
        if warm_errors == 0:
            break
    return etags


def report_load(
    title: str,
    latencies: dict[str, list[float]],
    errors: int,
    elapsed: float,
    rss: tuple[dict[int, float], dict[int, float]] | None = None,
) -> None:
    """Percentiles per kind, throughput, errors and each worker's RSS growth."""
    print(title)
    print(f"{'kind':<12} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for kind, samples in latencies.items():
        if samples:
            print(
                f"{kind:<12} {len(samples):>9} {pct(samples, 0.5):>8.1f} "
                f"{pct(samples, 0.95):>8.1f} {pct(samples, 0.99):>8.1f}"
            )
    print(f"total {served(latencies) / elapsed:,.0f} req/s, errors {errors}")
    if rss is not None:
        start, end = rss
        for pid in start:
            growth = (end[pid] / start[pid] - 1) * 100 if start[pid] else 0.0
            print(f"worker {pid}: RSS {start[pid]:.0f} -> {end[pid]:.0f} MiB ({growth:+.1f}%)")


def served(latencies: dict[str, list[float]]) -> int:
    """Requests of the mixed workload (cold renders are the disturbance, not the figure)."""
    return sum(len(v) for kind, v in latencies.items() if kind != "cold_image")


def p99_of(latencies: dict[str, list[float]], kinds: tuple[str, ...]) -> float:
    return pct([x for kind in kinds for x in latencies[kind]], 0.99)


def render_soak(renders: int) -> None:
    """Sequential renders in this process: median time and RSS growth (leaks show here)."""
    bars = random_walk_bars(300, seed=3)
    spec = ChartSpec(width=800, height=500)
    for _ in range(50):
        render_chart(bars, spec)
    start = rss_mib(os.getpid())
    samples = []
    for _ in range(renders):
        began = time.perf_counter()
        render_chart(bars, spec)
        samples.append(time.perf_counter() - began)
    end = rss_mib(os.getpid())
    print(
        f"{renders} sequential renders (300 bars, 800x500): median "
        f"{statistics.median(samples) * 1000:.1f} ms; RSS {start:.0f} -> {end:.0f} MiB "
        f"({(end / start - 1) * 100:+.1f}%)"
    )


@dataclass
class Round:
    """One steady round against one server: its latencies, and CPU per request on each side."""

    latencies: dict[str, list[float]]
    errors: int
    elapsed: float
    server_cpu_ms: float
    client_cpu_ms: float

    @property
    def rate(self) -> float:
        return served(self.latencies) / self.elapsed


def steady_round(
    url: str, server_pid: int, *, clients: int, seconds: float, etags: dict[int, str]
) -> Round:
    """One round of the mixed workload, and the CPU the server's processes and this client spent."""
    gc.collect()  # each round starts with the client's heap in the same state
    server_before, client_before = tree_cpu_seconds(server_pid), time.process_time()
    latencies, errors, elapsed = asyncio.run(
        run_load(url, clients=clients, seconds=seconds, etags=etags)
    )
    requests = max(served(latencies), 1)
    return Round(
        latencies,
        errors,
        elapsed,
        (tree_cpu_seconds(server_pid) - server_before) * 1000 / requests,
        (time.process_time() - client_before) * 1000 / requests,
    )


def pooled(rounds: list[Round]) -> dict[str, list[float]]:
    return {kind: [x for r in rounds for x in r.latencies[kind]] for kind in KINDS}


def report_rounds(name: str, rounds: list[Round]) -> None:
    for number, r in enumerate(rounds, 1):
        print(
            f"  {name} round {number}: {r.rate:,.1f} req/s, {r.errors} errors; CPU per request: "
            f"server {r.server_cpu_ms:.2f} ms, client {r.client_cpu_ms:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20, help="one steady round")
    parser.add_argument("--rounds", type=int, default=3, help="steady rounds per server")
    parser.add_argument("--disturbed-seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--cold-charts", type=int, default=1500)
    parser.add_argument("--renders", type=int, default=2000)
    args = parser.parse_args()
    configure_logging(log_format="json", level="error")
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    server, url, cold = start_gateway(root, cold_charts=args.cold_charts)
    baseline: subprocess.Popen[bytes] | None = None
    gateway_rounds: list[Round] = []
    base_rounds: list[Round] = []
    try:
        etags = warm_up(url, clients=args.clients, seconds=args.warmup)
        record_answers(url, etags, root / "answers.json")
        baseline, baseline_url = start_baseline(root / "answers.json")
        asyncio.run(run_load(baseline_url, clients=args.clients, seconds=5, etags=etags))
        workers = children(server.pid)
        rss_start = {pid: rss_mib(pid) for pid in workers}
        # The client is one Python process on the same two cores, and what a request costs it
        # drifts over minutes; rounds alternate so both servers meet the same drift.
        for _ in range(args.rounds):
            for rounds, target, pid in (
                (gateway_rounds, url, server.pid),
                (base_rounds, baseline_url, baseline.pid),
            ):
                rounds.append(
                    steady_round(
                        target, pid, clients=args.clients, seconds=args.seconds, etags=etags
                    )
                )
        rss_end = {pid: rss_mib(pid) for pid in workers}
        gc.collect()
        disturbed, disturbed_errors, disturbed_elapsed = asyncio.run(
            run_load(
                url,
                clients=args.clients,
                seconds=args.disturbed_seconds,
                etags=etags,
                cold=iter(cold),
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        if baseline is not None:
            baseline.terminate()
            baseline.wait(timeout=30)
    steady = pooled(gateway_rounds)
    title = (
        f"mixed load: {args.clients} clients, gateway serve --workers 2, "
        f"{args.rounds} rounds of {args.seconds:.0f} s"
    )
    report_load(
        title,
        steady,
        sum(r.errors for r in gateway_rounds),
        sum(r.elapsed for r in gateway_rounds),
        (rss_start, rss_end),
    )
    report_rounds("gateway", gateway_rounds)
    report_load(
        f"mixed load: {args.clients} clients, {args.disturbed_seconds:.0f} s, while "
        f"{COLD_CLIENTS} more clients ask for charts nobody has rendered",
        disturbed,
        disturbed_errors,
        disturbed_elapsed,
    )
    if len(disturbed["cold_image"]) >= len(cold):
        print(f"  (all {len(cold)} cold charts were rendered before the end: seed more)")
    report_load(
        "baseline: bare Starlette replaying the same answers (2 workers), same client, "
        "rounds alternating with the gateway's",
        pooled(base_rounds),
        sum(r.errors for r in base_rounds),
        sum(r.elapsed for r in base_rounds),
    )
    report_rounds("baseline", base_rounds)
    base_rate = statistics.median(r.rate for r in base_rounds)
    steady_rate = statistics.median(r.rate for r in gateway_rounds)
    disturbed_rate = served(disturbed) / disturbed_elapsed
    reads = ("list", "artifact")
    print(f"{'figure':<44} {'gateway':>12} {'baseline':>12} {'ratio':>7}")
    rows = [
        ("steady mixed throughput (req/s, median round)", steady_rate, base_rate),
        ("throughput while cold renders run (req/s)", disturbed_rate, base_rate),
        (
            "list+artifact p99 while cold renders run (ms)",
            p99_of(disturbed, reads),
            p99_of(steady, reads),
        ),
        (
            "all kinds p99 while cold renders run (ms)",
            p99_of(disturbed, KINDS),
            p99_of(steady, KINDS),
        ),
        (
            "server CPU per request (ms, median round)",
            statistics.median(r.server_cpu_ms for r in gateway_rounds),
            statistics.median(r.server_cpu_ms for r in base_rounds),
        ),
        (
            "client CPU per request (ms, median round)",
            statistics.median(r.client_cpu_ms for r in gateway_rounds),
            statistics.median(r.client_cpu_ms for r in base_rounds),
        ),
    ]
    for figure, value, baseline_value in rows:
        print(
            f"{figure:<44} {value:>12,.2f} {baseline_value:>12,.2f} {value / baseline_value:>6.2f}x"
        )
    print(
        "(the p99 rows' baseline is the gateway's own steady p99; "
        f"{len(disturbed['cold_image'])} cold charts rendered in the disturbed run, "
        f"p50 {pct(disturbed['cold_image'], 0.5):.0f} ms each)"
    )
    if args.renders >= 1:
        render_soak(args.renders)


if __name__ == "__main__":
    main()
