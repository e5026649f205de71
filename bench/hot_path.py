"""Benchmark: the hot path, one request at a time, against baselines measured in the same run.

Three `gateway serve` processes (one worker each, SQLite, lineage stored on the rows so MLflow is
never asked): one over 50 chart rows holding 500-bar snapshots (36 KB of metadata each), one over
the same rows with NULL JSON columns, both with kept answers off (GATEWAY_ANSWER_CACHE_S=0: each
page is read and resolved), and one over the first database with kept answers on (the default).
Sequential medians over keep-alive connections:

1. a page of 50 artifacts (names) vs the same page of the rows with NULL JSON columns: what the
   stored JSON costs a page that does not show it (target <= 1.5x);
2. a 304 for a chart and a cached chart image vs `/healthz` of the same server: what the image
   route adds to the cheapest request (target <= 2x);
3. the page again, answered from a kept answer, vs `/healthz`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlmodel import Session

from chartkit import random_walk_bars
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from tests.servers import free_port

PAGE = "{ artifacts(first: 50) { edges { node { id name } } } }"


def make_database(path: Path, *, with_json: bool) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    init_db(engine)
    with Session(engine) as session:
        for seed in range(50):
            meta = (
                {"market_data_snapshot": random_walk_bars(500, seed=seed), "workflow_id": "wf"}
                if with_json
                else None
            )
            session.add(
                Artifact(
                    name=f"chart {seed}",
                    artifact_type="chart",
                    symbol="BENCH",
                    run_id=f"{seed:032x}",
                    experiment_id="1",
                    chart_data={"minio_url": None} if with_json else None,
                    meta=meta,
                )
            )
        session.commit()
    engine.dispose()
    return url


def serve(
    root: Path, database_url: str, *, answer_cache_s: float = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """`gateway serve` on this database; kept answers off unless asked (the page figures are
    the work of a read, not a dictionary lookup)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / f'mlflow-{port}.db'}",
        "GATEWAY_LOG_LEVEL": "error",
        "GATEWAY_ANSWER_CACHE_S": str(answer_cache_s),
    }
    gateway = Path(sys.executable).with_name("gateway")
    server = subprocess.Popen([str(gateway), "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("gateway serve did not become ready")


def median_ms(call: Callable[[], httpx.Response], expected: int, repeat: int) -> float:
    for _ in range(20):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - started)
        assert response.status_code == expected, response.status_code
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-hot-"))
    full_db = make_database(root / "full.db", with_json=True)
    full, full_url = serve(root, full_db)
    bare, bare_url = serve(root, make_database(root / "bare.db", with_json=False))
    kept, kept_url = serve(root, full_db, answer_cache_s=2)
    try:
        with httpx.Client(timeout=60) as client:
            image = f"{full_url}/api/artifacts/1/image"
            etag = client.get(image).headers["etag"]

            def page(url: str) -> Callable[[], httpx.Response]:
                return lambda: client.post(f"{url}/graphql", json={"query": PAGE})

            figures = {
                "page of 50": median_ms(page(full_url), 200, args.repeat),
                "page of 50, NULL JSON columns": median_ms(page(bare_url), 200, args.repeat),
                "page of 50, kept answer": median_ms(page(kept_url), 200, args.repeat),
                "/healthz": median_ms(lambda: client.get(f"{full_url}/healthz"), 200, args.repeat),
                "304 (If-None-Match)": median_ms(
                    lambda: client.get(image, headers={"If-None-Match": etag}), 304, args.repeat
                ),
                "cached image": median_ms(lambda: client.get(image), 200, args.repeat),
            }
    finally:
        for server in (full, bare, kept):
            server.terminate()
            server.wait(timeout=30)
    rows = [
        ("page of 50 artifacts", "page of 50, NULL JSON columns", "<= 1.5"),
        ("page of 50, kept answer", "/healthz", "-"),
        ("304 (If-None-Match)", "/healthz", "<= 2"),
        ("cached image", "/healthz", "<= 2"),
    ]
    print(f"{'case':<24} {'median ms':>10} {'baseline':<32} {'ms':>8} {'ratio':>6}  target")
    for case, baseline, target in rows:
        value = figures["page of 50" if case == "page of 50 artifacts" else case]
        base = figures[baseline]
        print(
            f"{case:<24} {value:>10.2f} {baseline:<32} {base:>8.2f} {value / base:>6.2f}  {target}"
        )


if __name__ == "__main__":
    main()
