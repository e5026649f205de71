"""Helpers the tests share (fixtures live in conftest.py): settings overrides, MLflow runs, CI."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from gateway.settings import Settings
from tests.servers import postgres_unreachable_reason, redis_server_missing_reason

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The MLflow UI base the lineage tests configure; links are checked against it.
UI = "http://mlflow.example.test"
_pg_reason: list[str | None] = []


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and every process below it, from /proc.

    Children that already ended count too (in their parent's cutime/cstime once reaped), so the
    figure only grows: a worker process that is killed does not take its seconds with it.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    ticks = 0
    for member in tree:
        if (fields := _proc_stat(member)) is not None:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def render_pool_ticks() -> dict[int, int]:
    """Each live process of this process's worker pools (its forkserver and every process below
    it) with the CPU ticks it spent itself (user + system, not its reaped children's).

    For "does a stopped render still burn CPU": compare two readings over the processes in
    both. A worker killed meanwhile is in one reading only, so its past seconds (which reaping
    adds to the forkserver's children's time, whenever reaping happens) never count, and
    neither does a replacement worker that started in between; a worker that kept rendering
    is in both, with its ticks grown.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    states: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
            states[int(entry.name)] = fields
    roots = []
    for pid, parent in parents.items():
        if parent != me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"multiprocessing.forkserver" in cmdline:
            roots.append(pid)
    tree, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return {
        pid: int(states[pid][11]) + int(states[pid][12])
        for pid in tree
        if states[pid][0] != "Z"  # a zombie is a killed worker not yet reaped: it runs no more
    }


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds spent between two `render_pool_ticks` readings by the processes in both."""
    ticks = sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
    return ticks / os.sysconf("SC_CLK_TCK")


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """`settings` with some fields replaced, validated like the environment would be.

    A name that is not a Settings field is an error here (Settings itself ignores unknown keys,
    so a typo would silently test the default).
    """
    unknown = set(overrides) - set(Settings.model_fields)
    if unknown:
        raise TypeError(f"Settings has no field {sorted(unknown)}")
    return Settings.model_validate({**settings.model_dump(), **overrides})


def require_postgres() -> None:
    """Skip (or, in CI, fail) when PostgreSQL is unreachable."""
    if not _pg_reason:
        _pg_reason.append(postgres_unreachable_reason())
    reason = _pg_reason[0]
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
        print(f"\nskipping PostgreSQL test: {reason}")
        pytest.skip(reason)  # PostgreSQL unreachable on a bare machine: skip, with the reason


def require_redis_server() -> None:
    """Skip (or, in CI, fail) when `redis-server` is not installed."""
    reason = redis_server_missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the Redis tests")
        print(f"\nskipping Redis test: {reason}")
        pytest.skip(reason=reason)  # redis-server not installed (a bare machine): skip, say why


def make_run(
    mlflow: MlflowClient,
    experiment: str,
    *,
    workflow_id: str | None = None,
    start_time: int | None = None,
) -> str:
    """A finished MLflow run, tagged with its workflow when given; returns its id."""
    tags = {"workflow_id": workflow_id} if workflow_id else {}
    run = mlflow.create_run(experiment, tags=tags, start_time=start_time)
    mlflow.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def lineage_settings(settings: Settings, tracking_uri: str, **extra: Any) -> Settings:
    """Settings for lineage against a real MLflow server, with budgets for a loaded CI box."""
    defaults: dict[str, Any] = {
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_ui_url": UI,
        "mlflow_timeout_s": 3.0,
        "mlflow_breaker_cooldown_s": 0.5,
        # Each read resolves lineage anew (a kept answer would repeat the first read's).
        "answer_cache_s": 0,
    }
    return with_overrides(settings, **{**defaults, **extra})


def write_raw(engine: Engine, artifact_id: int, column: str, raw_json: str) -> None:
    """Store JSON text as another writer would: bypassing the gateway's own encoder."""
    value = ":v" if engine.dialect.name == "sqlite" else "CAST(:v AS json)"
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE artifacts SET {column} = {value} WHERE id = :id"),
            {"v": raw_json, "id": artifact_id},
        )


# On /metrics once the lineage resolver has MLflow's experiment list (the listing answered).
_EXPERIMENTS_LISTED = (
    'gateway_mlflow_request_seconds_count{operation="search_experiments",outcome="ok"}'
)


def experiments_listed(client: TestClient, *, timeout_s: float = 10) -> bool:
    """Wait until the app has read MLflow's experiment list (it does at start-up); False if it
    has not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while _EXPERIMENTS_LISTED not in client.get("/metrics").text:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
