"""Worker processes for CPU work: results, errors, priority, and jobs that are given up on."""

from __future__ import annotations

import asyncio
import os
import runpy
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from chartkit import ChartSpec, SnapshotError, random_walk_bars, render_chart
from gateway.errors import RenderTimeoutError
from gateway.observability import Metrics
from gateway.renderer import Renderer
from gateway.settings import Settings
from gateway.workers import WORKER_NICENESS, WorkerPool
from tests.support import cpu_seconds_between, render_pool_ticks, with_overrides

# Jobs are module-level functions: they travel to the worker by name.


def niceness() -> int:
    return os.nice(0)


def scheduling_policy() -> int:
    return os.sched_getscheduler(0)


def spin_after_writing_pid(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


def refuse(message: str) -> None:
    raise SnapshotError(message)


def modules_a_rerun_of_imports(script: str) -> list[str]:
    # What a fresh worker does first: run the serving process's main script as __mp_main__.
    before = set(sys.modules)
    runpy.run_path(script, run_name="__mp_main__")
    return sorted(set(sys.modules) - before)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(workers=1)
    yield workers
    workers.close()


def wait_for_pid(pid_file: Path) -> int:
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    return int(pid_file.read_text())


def test_a_job_returns_what_the_function_returns(pool: WorkerPool) -> None:
    bars = random_walk_bars(40, seed=5)
    png = asyncio.run(pool.run(render_chart, bars, ChartSpec(symbol="W")))
    assert png == render_chart(bars, ChartSpec(symbol="W"))


def test_a_job_raises_the_functions_own_error(pool: WorkerPool) -> None:
    with pytest.raises(SnapshotError, match="bar 3 is broken"):
        asyncio.run(pool.run(refuse, "bar 3 is broken"))


def test_workers_run_at_a_lower_priority_than_the_server(pool: WorkerPool) -> None:
    expected = min(os.nice(0) + WORKER_NICENESS, 19)
    assert asyncio.run(pool.run(niceness)) == expected


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="no POSIX scheduling API")
def test_workers_keep_the_servers_scheduling_policy_so_they_are_never_starved(
    pool: WorkerPool,
) -> None:
    # SCHED_IDLE (tried once) let two busy processes hold a render past its 10 s timeout; a
    # nice +10 worker still gets a bounded share of a busy machine.
    assert asyncio.run(pool.run(scheduling_policy)) == os.sched_getscheduler(0)


def test_a_cancelled_job_stops_its_worker_and_the_pool_goes_on(
    pool: WorkerPool, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> int:
        job = asyncio.ensure_future(pool.run(spin_after_writing_pid, str(pid_file)))
        pid = await asyncio.to_thread(wait_for_pid, pid_file)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        return pid

    pid = asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the cancelled job's worker is still running"
        time.sleep(0.05)
    assert asyncio.run(pool.run(niceness)) >= 0  # a new worker took its place


def test_a_fresh_worker_reruns_the_gateway_script_without_importing_anything(
    pool: WorkerPool,
) -> None:
    # Every cancelled job leaves a fresh worker; one that imported the CLI again would burn half
    # a second of CPU each time (the forkserver preloads it instead).
    script = shutil.which("gateway", path=str(Path(sys.executable).parent))
    assert script is not None, "the gateway console script is not installed"
    assert asyncio.run(pool.run(modules_a_rerun_of_imports, script)) == []


def test_a_render_past_its_deadline_burns_no_more_cpu(tmp_path: Path) -> None:
    settings = with_overrides(
        Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"),
        render_timeout_s=0.3,
        render_concurrency=1,
        max_snapshot_bars=100_000,
    )
    renderer = Renderer(settings=settings, metrics=Metrics())
    # About 1.3 s of drawing here (minute bars: 100,000 days would run past year 2200).
    bars = random_walk_bars(100_000, seed=8, step=timedelta(minutes=1))

    async def scenario() -> None:
        # The pool is started first, with a small chart and a generous deadline: starting it
        # (the forkserver's imports, seconds) is not the render under test.
        renderer.timeout_s = 120
        await renderer.render(random_walk_bars(30, seed=1), ChartSpec())
        renderer.timeout_s = settings.render_timeout_s
        with pytest.raises(RenderTimeoutError):
            await renderer.render(bars, ChartSpec(max_bars=100_000))

    try:
        asyncio.run(scenario())
        before = render_pool_ticks()
        time.sleep(2.0)
        burnt = cpu_seconds_between(before, render_pool_ticks())
    finally:
        renderer.close()
    assert burnt < 0.5, f"{burnt:.2f} s of CPU spent on a render nobody waits for"
