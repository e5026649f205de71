"""Load benchmark: `gateway serve --workers 2` under a mixed workload on loopback, and render soak.

Mixed workload at 64 concurrent clients (bounded in time): artifact lists with lineage, single
artifacts, images with and without If-None-Match. Reports requests/s, p50/p95/p99 per kind,
errors, and worker RSS after warm-up and at the end. The baseline, measured in the same run with
the same client and load: a bare Starlette app (`_replay_app.py`, 2 uvicorn workers) serving
the gateway's own recorded answers from memory. Then renders N charts in a row in one process
and reports RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.db import make_engine
from gateway.demo import seed_demo_data
from gateway.observability import configure_logging
from tests.servers import free_port

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
    url: str, *, clients: int, seconds: float, etags: dict[int, str]
) -> tuple[dict[str, list[float]], int, float]:
    latencies: dict[str, list[float]] = {"list": [], "artifact": [], "image": [], "image_304": []}
    errors = 0
    failures: dict[str, int] = {}
    charts = sorted(etags)
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=clients)
    ) as client:

        async def worker(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
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
        await asyncio.gather(*(worker(i) for i in range(clients)))
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


def start_gateway(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`gateway serve --workers 2` on demo data (embedded defaults), once /healthz answers."""
    db_url, mlflow_uri = f"sqlite:///{root / 'gw.db'}", f"sqlite:///{root / 'mlflow.db'}"
    engine = make_engine(db_url)
    seed_demo_data(engine=engine, tracking_uri=mlflow_uri)
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
    return server, answering(f"http://127.0.0.1:{port}")


def record_answers(url: str, etags: dict[int, str], path: Path) -> None:
    """The gateway's answers to every request of the workload, for the replay baseline."""
    recording: dict[str, tuple[str, str, str | None]] = {}

    def keep(key: str, response: httpx.Response) -> None:
        media = response.headers["content-type"]
        etag = response.headers.get("etag")
        recording[key] = (base64.b64encode(response.content).decode(), media, etag)

    keep("list", httpx.post(f"{url}/graphql", json={"query": LIST}, timeout=60))
    for artifact_id in range(1, 37):
        keep(f"artifact {artifact_id}", httpx.get(f"{url}/api/artifacts/{artifact_id}"))
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
        if httpx.get(f"{url}/api/artifacts/{i}").json()["artifact_type"] == "chart"
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
    latencies: dict[str, list[float]],
    errors: int,
    elapsed: float,
    rss: tuple[dict[int, float], dict[int, float]],
    *,
    clients: int,
    seconds: float,
) -> None:
    """Percentiles per kind, throughput, errors and each worker's RSS growth."""
    total = sum(len(v) for v in latencies.values())
    print(f"mixed load: {clients} clients, {seconds:.0f} s, gateway serve --workers 2")
    print(f"{'kind':<12} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for kind, samples in latencies.items():
        print(
            f"{kind:<12} {len(samples):>9} {pct(samples, 0.5):>8.1f} {pct(samples, 0.95):>8.1f} "
            f"{pct(samples, 0.99):>8.1f}"
        )
    print(f"total {total / elapsed:,.0f} req/s, errors {errors}")
    start, end = rss
    for pid in start:
        growth = (end[pid] / start[pid] - 1) * 100 if start[pid] else 0.0
        print(f"worker {pid}: RSS {start[pid]:.0f} -> {end[pid]:.0f} MiB ({growth:+.1f}%)")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--renders", type=int, default=2000)
    args = parser.parse_args()
    configure_logging(log_format="json", level="error")
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    server, url = start_gateway(root)
    try:
        etags = warm_up(url, clients=args.clients, seconds=args.warmup)
        record_answers(url, etags, root / "answers.json")
        workers = children(server.pid)
        rss_start = {pid: rss_mib(pid) for pid in workers}
        latencies, errors, elapsed = asyncio.run(
            run_load(url, clients=args.clients, seconds=args.seconds, etags=etags)
        )
        rss_end = {pid: rss_mib(pid) for pid in workers}
    finally:
        server.terminate()
        server.wait(timeout=30)
    report_load(
        latencies,
        errors,
        elapsed,
        (rss_start, rss_end),
        clients=args.clients,
        seconds=args.seconds,
    )
    baseline, baseline_url = start_baseline(root / "answers.json")
    try:
        asyncio.run(run_load(baseline_url, clients=args.clients, seconds=5, etags=etags))
        base_latencies, base_errors, base_elapsed = asyncio.run(
            run_load(baseline_url, clients=args.clients, seconds=args.seconds, etags=etags)
        )
    finally:
        baseline.terminate()
        baseline.wait(timeout=30)
    gateway_rate = sum(len(v) for v in latencies.values()) / elapsed
    base_rate = sum(len(v) for v in base_latencies.values()) / base_elapsed
    print(
        f"baseline (bare Starlette replaying the same answers, 2 workers): {base_rate:,.0f} req/s, "
        f"errors {base_errors}; gateway {gateway_rate:,.0f} req/s = {gateway_rate / base_rate:.2f}x"
    )
    for kind in latencies:
        print(
            f"  {kind:<10} p99 gateway {pct(latencies[kind], 0.99):7.1f} ms, "
            f"baseline {pct(base_latencies[kind], 0.99):7.1f} ms"
        )
    if args.renders >= 1:
        render_soak(args.renders)


if __name__ == "__main__":
    main()
