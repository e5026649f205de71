"""Benchmark: the image route over real HTTP (uvicorn on loopback) against in-process baselines.

1. Cache hits vs a plain Starlette route returning the same bytes from memory (requests/s at
   32 concurrent clients; target ratio >= 0.8).
2. MinIO-proxied misses vs a direct `minio` client `get_object` of the same object (median
   latency), with moto's S3 server standing in for MinIO as a process of its own, as MinIO is
   (in this process, the direct GET would hand over to the server thread by the GIL and pay no
   cross-process wake-ups, which the gateway's GET does pay).
3. Regeneration throughput (distinct snapshots, 4 concurrent clients) and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from minio import Minio
from pydantic import SecretStr
from sqlmodel import Session

from chartkit import random_walk_bars, render_chart
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.observability import configure_logging
from gateway.settings import Settings
from tests.servers import free_port


async def load(url: str, *, clients: int, seconds: float) -> float:
    """Requests per second that `clients` concurrent keep-alive clients get from `url`, each
    with its own connection (as bench/load.py says why: one pool of many connections costs
    the client more per response than the server does)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            while time.perf_counter() < deadline:
                response = await client.get(url)
                assert response.status_code == 200
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def gateway_env(settings: Settings) -> dict[str, str]:
    """The environment that configures the gateway process like `settings`."""
    return {
        "DATABASE_URL": settings.database_url,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MINIO_ENDPOINT": settings.minio_endpoint or "",
        "MINIO_ACCESS_KEY": settings.minio_access_key or "",
        "MINIO_SECRET_KEY": "s",
        "GATEWAY_LOG_LEVEL": "error",
        "GATEWAY_RENDER_CONCURRENCY": str(settings.render_concurrency),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, *, busy_share: float = 0.05, limit_s: float = 60) -> None:
    """Wait until the server stops working on its own (start-up warm-ups, e.g. opening the
    local MLflow store), so that work is not measured as part of the first case."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < busy_share:
            return


class Served:
    """`uvicorn --factory APP` in a subprocess on a free loopback port."""

    def __init__(self, factory: str, env: dict[str, str]) -> None:
        self.factory = factory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}

    def __enter__(self) -> Served:
        uvicorn = Path(sys.executable).with_name("uvicorn")
        self.process = subprocess.Popen(
            [
                str(uvicorn),
                "--factory",
                self.factory,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=self.env,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    wait_until_idle(self.process.pid)
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.factory} did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


def start_object_store() -> tuple[subprocess.Popen[bytes], str, Minio, bytes]:
    """moto's S3 server (`moto_server`, its own process) with one stored 500-bar chart;
    returns (server, endpoint, client, png)."""
    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its per-request access log
    )
    endpoint = f"127.0.0.1:{port}"
    minio = Minio(endpoint, access_key="k", secret_key="s", secure=False, region="us-east-1")
    for _ in range(300):
        try:
            minio.make_bucket("charts")
            break
        except Exception:  # not listening yet
            if moto.poll() is not None:
                raise RuntimeError("moto_server exited") from None
            time.sleep(0.1)
    else:
        moto.terminate()
        raise RuntimeError("moto_server did not answer within 30 s")
    png = render_chart(random_walk_bars(500, seed=1))
    minio.put_object(
        "charts", "bench/chart.png", io.BytesIO(png), len(png), content_type="image/png"
    )
    return moto, endpoint, minio, png


def seed_rows(db_url: str, *, misses: int) -> None:
    """One cached chart (id 1), `misses` proxied ones (100+), 12 to regenerate (1000+)."""
    engine = make_engine(db_url)
    init_db(engine)
    stored = {"minio_url": "s3://charts/bench/chart.png"}
    with Session(engine) as session:
        session.add(Artifact(id=1, name="hit", artifact_type="chart", chart_data=stored))
        for i in range(misses):
            session.add(Artifact(id=100 + i, name="miss", artifact_type="chart", chart_data=stored))
        for i in range(12):
            snapshot = {"market_data_snapshot": random_walk_bars(300, seed=i)}
            session.add(Artifact(id=1000 + i, name="render", artifact_type="chart", meta=snapshot))
        session.commit()
    engine.dispose()


def time_misses(url: str, minio: Minio, png: bytes, misses: int) -> tuple[list[float], list[float]]:
    """Per-request seconds of proxied misses through the gateway, and of direct get_object."""
    proxied = []
    with httpx.Client(timeout=30) as http:
        for i in range(misses):
            started = time.perf_counter()
            response = http.get(f"{url}/api/artifacts/{100 + i}/image")
            proxied.append(time.perf_counter() - started)
            assert response.headers["x-cache"] == "miss"
            assert response.content == png
    direct = []
    for _ in range(misses):
        started = time.perf_counter()
        obj = minio.get_object("charts", "bench/chart.png")
        obj.read()
        obj.close()
        obj.release_conn()
        direct.append(time.perf_counter() - started)
    return proxied, direct


async def render_rate(url: str) -> float:
    """Charts regenerated per second, 12 distinct charts over 4 clients."""
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with sem:
                r = await client.get(f"{url}/api/artifacts/{1000 + i}/image")
                assert r.headers["x-chart-source"] == "regenerated"

        await asyncio.gather(*(one(i) for i in range(12)))
        return 12 / (time.perf_counter() - started)


def report(
    hits: float, plain: float, proxied: list[float], direct: list[float], renders: float
) -> None:
    """The table: each figure beside its baseline from the same run."""
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{'case':<44} {'value':>14} {'baseline':>14} {'ratio':>7}")
    print(
        f"{'cache hits, req/s (32 clients)':<44} {hits:>14.0f} {plain:>14.0f} {hits / plain:>7.2f}"
        "   baseline: plain Starlette route, same bytes, own uvicorn process"
    )
    p_med, d_med = statistics.median(proxied), statistics.median(direct)
    print(
        f"{'MinIO-proxied miss, median ms':<44} {p_med * 1000:>14.1f} {d_med * 1000:>14.1f} "
        f"{p_med / d_med:>7.2f}   baseline: direct minio get_object"
    )
    print(f"{'regeneration, charts/s (300 bars, 4 clients)':<44} {renders:>14.1f}")
    print(f"peak RSS of the server processes: {peak_mb:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--misses", type=int, default=60)
    args = parser.parse_args()
    configure_logging(log_format="json", level="error")
    root = Path(tempfile.mkdtemp(prefix="bench-image-"))
    moto, endpoint, minio, png = start_object_store()
    db_url = f"sqlite:///{root / 'gw.db'}"
    seed_rows(db_url, misses=args.misses)
    settings = Settings(
        database_url=db_url,
        minio_endpoint=endpoint,
        minio_access_key="k",
        minio_secret_key=SecretStr("s"),
        mlflow_tracking_uri=f"sqlite:///{root / 'm.db'}",
        render_concurrency=2,
    )
    (root / "chart.png").write_bytes(png)
    # Both run as their own uvicorn process (one worker each), as in production.
    baseline_server = Served(
        "bench._plain_png_app:create_app", {"BENCH_PNG": str(root / "chart.png")}
    )
    try:
        with (
            Served("gateway.app:create_app", gateway_env(settings)) as gateway,
            baseline_server as baseline,
        ):
            httpx.get(f"{gateway.url}/api/artifacts/1/image").raise_for_status()  # warm the cache
            hits = asyncio.run(
                load(
                    f"{gateway.url}/api/artifacts/1/image",
                    clients=args.clients,
                    seconds=args.seconds,
                )
            )
            plain = asyncio.run(
                load(f"{baseline.url}/png", clients=args.clients, seconds=args.seconds)
            )
            proxied, direct = time_misses(gateway.url, minio, png, args.misses)
            renders = asyncio.run(render_rate(gateway.url))
    finally:
        moto.terminate()
        moto.wait(timeout=15)
    report(hits, plain, proxied, direct, renders)


if __name__ == "__main__":
    main()
