"""The first answer after start is right: the gateway's own warm-up is not an MLflow outage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from gateway.lineage import LineageStatus
from gateway.mlflow_backend import SearchBackend
from gateway.mlflow_runs import Experiment, RunRecord
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.resolver import LineageResolver
from tests.servers import GatewayProcess


def run_cli(env: dict[str, str], *args: str) -> None:
    gateway = Path(sys.executable).with_name("gateway")
    subprocess.run(
        [str(gateway), *args],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_first_read_after_readyz_on_fresh_demo_data_is_hydrated(tmp_path: Path) -> None:
    # What `make run` does, then the README's first curl as soon as /readyz says ready. Before,
    # /readyz said ready at once and artifact 24 read UNAVAILABLE ("MLflow did not answer in
    # time") for seconds while the local MLflow store was still opening.
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    run_cli(env, "init-db")
    run_cli(env, "demo-data")
    with GatewayProcess(tmp_path, env) as gateway, httpx.Client(timeout=60) as http:
        gateway.wait_until_listening()
        statuses = []
        deadline = time.monotonic() + 120
        while True:
            ready = http.get(f"{gateway.url}/readyz")
            statuses.append(ready.status_code)
            if ready.status_code == 200 or time.monotonic() > deadline:
                break
            assert ready.json() == {"status": "starting", "database": "ok", "lineage": "warming_up"}
            assert ready.headers["retry-after"] == "1"
        assert statuses[-1] == 200, statuses
        first = http.post(
            f"{gateway.url}/graphql",
            json={"query": "{ artifact(id: 24) { runId lineage { status source reason } } }"},
        ).json()["data"]["artifact"]
        assert first["lineage"] == {
            "status": "HYDRATED",
            "source": "METADATA_RUN_ID",
            "reason": None,
        }
        assert first["runId"]
        rest = http.get(f"{gateway.url}/api/artifacts/24").json()
        assert rest["lineage"]["status"] == "HYDRATED"
        assert rest["run_id"] == first["runId"]


class SlowToOpenBackend(SearchBackend):
    """A pure fake for the resolver's unit tests: opening takes `open_s`, lookups are instant."""

    def __init__(self, open_s: float) -> None:
        self.open_s = open_s
        self.opened = False

    async def warm_up(self) -> None:
        await asyncio.sleep(self.open_s)
        self.opened = True

    async def experiments(self) -> list[Experiment]:
        if not self.opened:
            await asyncio.sleep(self.open_s)  # a lookup racing the opening pays for it too
        return [Experiment("1", "Default")]

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
    ) -> list[RunRecord]:
        return [RunRecord("r1", "1")]


def legacy_row() -> Artifact:
    return Artifact(id=1, name="legacy", artifact_type="chart", workflow_id="wf-1")


def test_lookups_wait_for_the_warm_up_instead_of_reporting_mlflow_unavailable() -> None:
    async def scenario() -> tuple[LineageStatus, bool]:
        resolver = LineageResolver(SlowToOpenBackend(open_s=0.5), metrics=Metrics(), timeout_s=0.1)
        resolver.start_warm_up(budget_s=10)
        warming = resolver.warming_up
        lineage = (await resolver.resolve_rows([legacy_row()]))[0]
        return lineage.status, warming

    status, warming = asyncio.run(scenario())
    assert warming
    assert status is LineageStatus.HYDRATED


def test_a_warm_up_past_its_budget_no_longer_holds_lookups() -> None:
    async def scenario() -> tuple[LineageStatus, bool, bool]:
        backend = SlowToOpenBackend(open_s=30)
        resolver = LineageResolver(backend, metrics=Metrics(), timeout_s=0.1)
        resolver.start_warm_up(budget_s=0.3)
        lineage = (await resolver.resolve_rows([legacy_row()]))[0]
        still_opening = not backend.opened
        resolver.stop_warm_up()
        return lineage.status, still_opening, resolver.warming_up

    status, still_opening, warming = asyncio.run(scenario())
    assert status is LineageStatus.UNAVAILABLE  # a genuinely slow MLflow is still reported
    assert still_opening  # answered without waiting for the 30 s opening
    assert not warming
