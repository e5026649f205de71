"""The run graph: an artifact's MLflow run in full, and a workflow's runs.

Run details come from the same `runs/search` answers lineage reads (they carry params, metrics
and tags), so a run that lineage just found costs nothing more; a run whose id was stored on
the row is searched for, with every other such run of the request, in one batched search. Run
details are kept with the lineage TTLs (a run found for the hit TTL, an unknown id for the miss
TTL), and every MLflow call goes through the lineage resolver: its breaker, semaphore, timeout
and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import TLRUCache

from gateway.errors import MlflowUnreachableError
from gateway.lineage import Refused, Unavailable
from gateway.mlflow_backend import MlflowRequestRefusedError
from gateway.mlflow_runs import RunRecord, is_mlflow_id
from gateway.resolver import OUTAGES, LineageResolver, unavailable_of

_NOT_KEPT = object()
# One workflow's runs are few; the details of many runs are kept.
DETAILS_CACHED = 20_000
WORKFLOWS_CACHED = 2_000


@dataclass(frozen=True, slots=True)
class RunView:
    """A run with what the gateway adds to it: its experiment's name and its MLflow UI link."""

    record: RunRecord
    experiment_name: str | None
    url: str | None


def run_ui_url(ui_url: str | None, run: RunRecord) -> str | None:
    """MLflow UI link to the run (None without MLFLOW_UI_URL)."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


class RunCatalog:
    """Process-wide run details and workflow runs, cached, fetched through the resolver."""

    def __init__(self, resolver: LineageResolver, *, ui_url: str | None = None) -> None:
        self.resolver = resolver
        self.ui_url = ui_url
        hit_ttl, miss_ttl = resolver.hit_ttl_s, resolver.miss_ttl_s
        self._details: TLRUCache[str, RunRecord | None] = TLRUCache(
            maxsize=DETAILS_CACHED,
            ttu=lambda _key, run, now: now + (hit_ttl if run is not None else miss_ttl),
        )
        self._workflows: TLRUCache[str, tuple[RunRecord, ...]] = TLRUCache(
            maxsize=WORKFLOWS_CACHED,
            ttu=lambda _key, runs, now: now + (hit_ttl if runs else miss_ttl),
        )
        resolver.runs_seen = self.remember

    def remember(self, runs: Sequence[RunRecord]) -> None:
        """Keep whole runs a search returned (lineage's searches included)."""
        for run in runs:
            self._details[run.run_id] = run

    def view(self, run: RunRecord) -> RunView:
        """The run with its experiment's name and UI link."""
        return RunView(
            record=run,
            experiment_name=self.resolver.experiment_name(run.experiment_id),
            url=run_ui_url(self.ui_url, run),
        )

    async def details(self, run_ids: Sequence[str]) -> list[RunRecord | Unavailable | None]:
        """Each run in full (None: MLflow has no such run), cached ones free, the rest in one
        batched search; `Unavailable` for runs MLflow could not be asked about."""
        results: dict[str, RunRecord | Unavailable | None] = {}
        missing: list[str] = []
        for run_id in dict.fromkeys(run_ids):
            if not is_mlflow_id(run_id):
                results[run_id] = None  # no run has such an id: nothing to ask
                continue
            kept = self._details.get(run_id, _NOT_KEPT)  # one look: an entry can expire
            if kept is _NOT_KEPT:
                missing.append(run_id)
            else:
                results[run_id] = kept  # type: ignore[assignment]
        if missing:
            outcomes = await self.resolver.fetch_runs(missing)
            for run_id in missing:
                outcome = outcomes[run_id]
                if isinstance(outcome, Unavailable):
                    results[run_id] = outcome
                elif isinstance(outcome, Refused):
                    results[run_id] = None  # reads as not found; not kept, nor an outage
                elif outcome is None:
                    self._details[run_id] = None
                    results[run_id] = None
                else:
                    # The search told `remember`; an entry evicted since is searched next time.
                    results[run_id] = self._details.get(run_id)
        return [results[run_id] for run_id in run_ids]

    async def run(self, run_id: str) -> RunRecord | None:
        """One run in full, None when MLflow has none; MlflowUnreachableError when
        MLflow cannot be asked."""
        (found,) = await self.details([run_id])
        if isinstance(found, Unavailable):
            raise MlflowUnreachableError(found.reason)
        return found

    async def workflow_runs(self, workflow_id: str) -> tuple[RunRecord, ...]:
        """The workflow's runs, newest first (none when MLflow refuses the search);
        MlflowUnreachableError when MLflow cannot say."""
        kept = self._workflows.get(workflow_id)
        if kept is not None:
            return kept
        try:
            runs = tuple(await self.resolver.fetch_workflow_runs(workflow_id))
        except MlflowRequestRefusedError:
            return ()  # the search's own problem, not an outage: not kept either
        except OUTAGES as exc:
            raise MlflowUnreachableError(unavailable_of(exc).reason) from exc
        self._workflows[workflow_id] = runs
        return runs

    def clear(self) -> None:
        """Forget kept runs (tests)."""
        self._details.clear()
        self._workflows.clear()
