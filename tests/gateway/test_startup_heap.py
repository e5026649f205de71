"""Start-up freezes the heap it leaves (once per process), after collecting its garbage.

Run in a fresh interpreter: freezing is process-wide, and the test process's own heap and
earlier apps would decide what these checks see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import gc, json, sys, weakref
    from starlette.testclient import TestClient
    from gateway.app import create_app
    from gateway.settings import Settings

    class Node:
        pass

    # A reference cycle, made old (a collection moves what survives it to the oldest
    # generation), then dropped: garbage that only a full collection frees.
    cycle = Node()
    cycle.self = cycle
    gone = weakref.ref(cycle)
    gc.collect()
    del cycle
    settings = Settings(
        database_url="sqlite:///" + sys.argv[1],
        mlflow_tracking_uri="http://127.0.0.1:9",  # nothing listens: the warm-up fails fast
        log_level="error",
    )
    seen = {"before": gc.get_freeze_count()}
    with TestClient(create_app(settings)) as client:
        client.get("/healthz").raise_for_status()
        seen["first_app"] = gc.get_freeze_count()
        seen["garbage_kept"] = gone() is not None
    with TestClient(create_app(settings)) as client:
        client.get("/healthz").raise_for_status()
        seen["second_app"] = gc.get_freeze_count()
    print(json.dumps(seen))
    """
)


def run_probe(tmp_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "gw.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


def test_start_up_freezes_the_heap_once_per_process_after_collecting_its_garbage(
    tmp_path: Path,
) -> None:
    seen = run_probe(tmp_path)
    assert seen["before"] == 0
    assert seen["first_app"] > 100_000
    assert seen["garbage_kept"] is False
    # The second app's start-up freezes nothing more (its own objects would add thousands):
    # once per process. Frozen objects freed by their reference counts leave the count.
    assert seen["second_app"] <= seen["first_app"]
