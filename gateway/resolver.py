"""MLflow lookups for lineage and run details: one `LineageResolver` per process.

It holds the TTL cache (hits longer than misses), the shared tier (Redis, when configured), the
circuit breaker, the experiment listing and the MLflow warm-up, and answers lookups in batches
within one deadline. Shared by reads (the services layer batches a request's lookups), the
repair mutation and CLI, and the run details (`gateway.runs`, told of every whole run a search
returns). What the outcomes mean for a row is `gateway.lineage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from cachetools import TLRUCache
from prometheus_client import Counter
from structlog.typing import FilteringBoundLogger

from gateway import tracing
from gateway.breaker import CircuitBreaker, CircuitOpenError
from gateway.bytecache import SingleFlight
from gateway.lineage import (
    Key,
    Lineage,
    LineageStatus,
    Outcome,
    Refused,
    Unavailable,
    candidates_of,
    decide,
)
from gateway.mlflow_backend import (
    WORKFLOW_RUNS_MAX,
    MlflowRequestRefusedError,
    MlflowUnavailableError,
    RunRef,
    SearchBackend,
    ref_of,
    safe_run_ids,
)
from gateway.mlflow_runs import RunRecord
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.rows import effective_workflow_id
from gateway.sharedflight import SharedFlight
from gateway.sharedstore import SharedStore

log = structlog.get_logger("gateway.lineage")
T = TypeVar("T")
EXPERIMENTS_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class _Shared:
    """A lookup's outcome as replicas share it: the run (None: there is none) until `until`
    (wall-clock seconds)."""

    run: RunRef | None
    until: float


class ResolutionRecorder:
    """Counts and logs resolutions (one event name per outcome) for one request or batch.

    Its logger is bound once: the module's lazy logger binds anew at every call (4 us, a fifth
    of what a warm legacy row costs), and a row whose event the level filters out builds no
    fields for it.
    """

    def __init__(self, counter: Callable[[str, str], Counter]) -> None:
        self._counter = counter
        self._log: FilteringBoundLogger = log.bind()
        self._info = self._log.is_enabled_for(logging.INFO)
        self._warning = self._log.is_enabled_for(logging.WARNING)

    def __call__(self, row: Artifact, lineage: Lineage) -> None:
        """Count and log one resolution."""
        status = lineage.status
        self._counter(status.value, lineage.source.value if lineage.source else "none").inc()
        if status is LineageStatus.STORED:
            return  # nothing to tell: the row had its ids
        if not (self._warning if status is LineageStatus.UNAVAILABLE else self._info):
            return
        fields: dict[str, Any] = {
            "artifact_id": row.id,
            "workflow_id": effective_workflow_id(row),
            "run_id": lineage.run_id,
        }
        if status is LineageStatus.HYDRATED:
            self._log.info("lineage.hydrated", source=lineage.source, **fields)
        elif status is LineageStatus.UNRESOLVED:
            self._log.info("lineage.unresolved", reason=lineage.reason, **fields)
        else:
            self._log.warning("lineage.unavailable", reason=lineage.reason, **fields)


class LineageResolver:
    """Process-wide MLflow lookups with a TTL cache (hits longer than misses) and a breaker."""

    def __init__(
        self,
        backend: SearchBackend,
        *,
        metrics: Metrics,
        timeout_s: float = 2.0,
        concurrency: int = 8,
        hit_ttl_s: float = 300.0,
        miss_ttl_s: float = 30.0,
        breaker: CircuitBreaker | None = None,
        cache_size: int = 50_000,
        shared: SharedStore | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._hit_ttl = hit_ttl_s
        self._miss_ttl = miss_ttl_s
        # key -> (outcome, seconds it is kept): outcomes found here are kept the full TTL,
        # those read from Redis for what is left of it.
        self._cache: TLRUCache[Key, tuple[RunRef | None, float]] = TLRUCache(
            maxsize=cache_size, ttu=self._time_to_use
        )
        # Redis behind the cache (None: this process only): outcomes, the experiment list, and
        # one search per workflow across replicas.
        self.shared = shared
        self._shared_searches: SharedFlight[_Shared] | None = None
        if shared is not None:
            self._shared_searches = SharedFlight(shared, metrics=metrics, tier="lineage")
        self._experiments: tuple[float, list[str]] | None = None
        # Experiment names from the latest listing (for the run details).
        self._experiment_names: dict[str, str | None] = {}
        # Told of every whole run a search here returned (the run details cache listens).
        self.runs_seen: Callable[[Sequence[RunRecord]], None] | None = None
        # One experiment listing at a time: lookups that need it while it runs share it.
        self._experiment_listing: SingleFlight[str, list[str]] = SingleFlight()
        self._prefetch: asyncio.Task[None] | None = None
        self._semaphore = asyncio.Semaphore(concurrency)
        self._warm_up: asyncio.Task[None] | None = None
        self._warm_up_deadline = 0.0
        self._resolution_counters: dict[tuple[str, str], Counter] = {}

    # -- warm-up ------------------------------------------------------------------------------
    # Opening a local MLflow store (import, schema checks) takes seconds on a fresh process. That
    # is the gateway's own start-up, not an MLflow outage: lookups wait for it (up to its own
    # budget) instead of spending their lookup budget on it and answering UNAVAILABLE, and
    # /readyz says 503 until it is over.
    def start_warm_up(self, *, budget_s: float) -> None:
        """Open the MLflow backend in the background; lookups wait for it up to `budget_s`."""
        self._warm_up_deadline = time.monotonic() + budget_s
        self._warm_up = asyncio.ensure_future(self._run_warm_up())

    async def _run_warm_up(self) -> None:
        started = time.perf_counter()
        try:
            await self.backend.warm_up()
        except Exception as exc:  # a failed opening is for the lookups to report, not a crash
            log.warning("lineage.warm_up_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            return
        log.info("lineage.warmed_up", duration_ms=round((time.perf_counter() - started) * 1000))
        # The experiment list every search needs, read now rather than in front of the first
        # read's searches (lookups do not wait for it: one arriving meanwhile shares it). Runs
        # of experiments created later are still found: see `_fetch`.
        self._prefetch = asyncio.ensure_future(self._prefetch_experiments())

    async def _prefetch_experiments(self) -> None:
        with contextlib.suppress(*LOOKUP_FAILURES):
            await self._experiment_ids()

    @property
    def warming_up(self) -> bool:
        """True while the backend is still opening and its budget has not run out."""
        return (
            self._warm_up is not None
            and not self._warm_up.done()
            and time.monotonic() < self._warm_up_deadline
        )

    async def until_warm(self, *, timeout_s: float | None = None) -> None:
        """Wait for the warm-up to finish, its budget to run out, or `timeout_s`."""
        if self._warm_up is None or not self.warming_up:
            return
        remaining = self._warm_up_deadline - time.monotonic()
        if timeout_s is not None:
            remaining = min(remaining, timeout_s)
        # shield: a cancelled request must not cancel the warm-up every request waits for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._warm_up), max(remaining, 0.0))

    def stop_warm_up(self) -> None:
        """Cancel a warm-up or experiment prefetch still running (shutdown)."""
        for task in (self._warm_up, self._prefetch):
            if task is not None:
                task.cancel()

    @staticmethod
    def _time_to_use(_key: Key, value: tuple[RunRef | None, float], now: float) -> float:
        return now + value[1]

    def _keep(self, key: Key, outcome: RunRef | None) -> None:
        self._cache[key] = (outcome, self._ttl_of(outcome))

    @property
    def hit_ttl_s(self) -> float:
        """Seconds a run that was found is kept."""
        return self._hit_ttl

    @property
    def miss_ttl_s(self) -> float:
        """Seconds an answer of "no such run" is kept."""
        return self._miss_ttl

    def _ttl_of(self, outcome: RunRef | None) -> float:
        return self._hit_ttl if outcome is not None else self._miss_ttl

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        # Span names say what MLflow was asked (`mlflow.search_runs`); how, as an attribute.
        name, _, how = operation.partition("_by_")

        async def timed() -> T:
            async with self._semaphore:
                started = time.perf_counter()
                outcome = "ok"
                try:
                    async with asyncio.timeout(self.timeout_s):
                        return await fn()
                except TimeoutError:
                    outcome = "timeout"
                    raise
                except MlflowUnavailableError:
                    outcome = "error"
                    raise
                except MlflowRequestRefusedError:
                    outcome = "refused"
                    raise
                finally:
                    self.metrics.mlflow_request_seconds.labels(operation, outcome).observe(
                        time.perf_counter() - started
                    )

        with tracing.span(f"mlflow.{name}", **{"mlflow.search_by": how or None}):
            try:
                # A refusal passes the breaker uncounted: only outages open it.
                return await self.breaker.call(timed)
            except MlflowRequestRefusedError as exc:
                tracing.mark_error("MLflow refused the request")
                log.warning("lineage.mlflow_refused", operation=operation, error=str(exc))
                raise
            except (MlflowUnavailableError, TimeoutError, CircuitOpenError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
                tracing.mark_error(reason)
                if not isinstance(exc, CircuitOpenError):
                    log.warning("lineage.mlflow_error", operation=operation, error=reason)
                raise

    async def _experiment_ids(self, *, listed_since: float | None = None) -> list[str]:
        """The experiment ids: the list read within EXPERIMENTS_TTL_S (and, with
        `listed_since`, not before that moment), else a new listing."""
        now = time.monotonic()
        if self._experiments is not None:
            listed_at, ids = self._experiments
            fresh = now - listed_at < EXPERIMENTS_TTL_S
            if fresh and (listed_since is None or listed_at >= listed_since):
                return ids
        ids, _shared = await self._experiment_listing.run(
            "experiments", lambda: self._list_experiments(listed_since)
        )
        return ids

    async def _list_experiments(self, listed_since: float | None = None) -> list[str]:
        started = time.monotonic()
        if self.shared is not None:
            shared = await self._shared_experiments(listed_since)
            if shared is not None:
                return shared
        listed = await self._call("search_experiments", self.backend.experiments)
        ids = [experiment.experiment_id for experiment in listed]
        names = {experiment.experiment_id: experiment.name for experiment in listed}
        self._experiments = (started, ids)
        self._experiment_names = names
        if self.shared is not None:
            await self.shared.put_json(
                self.shared.key("lineage", "experiments"),
                {
                    "listed_at": time.time() - (time.monotonic() - started),
                    "ids": ids,
                    "names": names,
                },
                ttl_s=EXPERIMENTS_TTL_S,
                kind="lineage",
            )
        return ids

    async def _shared_experiments(self, listed_since: float | None) -> list[str] | None:
        """The list another replica read within EXPERIMENTS_TTL_S (and since `listed_since`)."""
        assert self.shared is not None
        found = await self.shared.get_json(
            self.shared.key("lineage", "experiments"), _checked_experiments, kind="lineage"
        )
        if found is None:
            return None
        listed_wall, ids, names = found
        # Its moment on this process's monotonic clock (another host's clock ahead: now).
        listed_at = time.monotonic() - max(time.time() - listed_wall, 0.0)
        if time.monotonic() - listed_at >= EXPERIMENTS_TTL_S:
            return None
        if listed_since is not None and listed_at < listed_since:
            return None
        self._experiments = (listed_at, ids)
        self._experiment_names = names
        return ids

    def experiment_name(self, experiment_id: str) -> str | None:
        """The experiment's name as the latest listing gave it (None when not listed)."""
        return self._experiment_names.get(experiment_id)

    def _saw(self, runs: Sequence[RunRecord]) -> None:
        if self.runs_seen is not None and runs:
            self.runs_seen(runs)

    async def lookup(self, keys: Sequence[Key]) -> list[Outcome]:
        """Outcomes for lookup keys: cached ones free, run ids in one search, workflows each."""
        results: dict[Key, Outcome] = {}
        missing: list[Key] = []
        for key in keys:
            kept = self._cache.get(key)
            if kept is not None:
                results[key] = kept[0]
            else:
                missing.append(key)
        if missing and self.shared is not None:
            found = await self._shared_outcomes(missing)
            results.update(found)
            missing = [key for key in missing if key not in found]
        if missing:
            results.update(await self._fetch(missing))
        return [results[key] for key in keys]

    # -- the shared tier (Redis) ------------------------------------------------------------
    def _shared_key(self, key: Key) -> str:
        assert self.shared is not None
        kind, value = key
        if kind == "workflow" or safe_run_ids([value]) != [value]:
            # Workflow ids (and stored run ids) are any text: a digest keeps them out of keys.
            value = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:40]
        return self.shared.key("lineage", kind, value)

    async def _shared_outcomes(self, keys: list[Key]) -> dict[Key, Outcome]:
        """Outcomes another replica found and shared, in one round trip; kept here for what is
        left of their TTL."""
        assert self.shared is not None
        by_name = {self._shared_key(key): key for key in keys}
        found = await self.shared.get_json_many(list(by_name), _checked_shared, kind="lineage")
        results: dict[Key, Outcome] = {}
        now = time.time()
        for name, shared in found.items():
            key = by_name[name]
            if key[0] == "run" and shared.run is not None and shared.run.run_id != key[1]:
                continue  # an entry for another run under this key: not ours to serve
            left = min(shared.until - now, self._ttl_of(shared.run))
            if left <= 0:
                continue
            self._cache[key] = (shared.run, left)
            results[key] = shared.run
        return results

    def _shared_document(self, outcome: RunRef | None) -> tuple[dict[str, Any], float]:
        ttl = self._ttl_of(outcome)
        run = (
            None
            if outcome is None
            else {"run_id": outcome.run_id, "experiment_id": outcome.experiment_id}
        )
        return {"run": run, "until": time.time() + ttl}, ttl

    async def _share(self, outcomes: dict[Key, RunRef | None]) -> None:
        """Publish outcomes found here (failures are never shared, as they are never kept)."""
        if self.shared is None:
            return
        items = []
        for key, outcome in outcomes.items():
            document, ttl = self._shared_document(outcome)
            items.append((self._shared_key(key), document, ttl))
        await self.shared.put_json_many(items, kind="lineage")

    async def _fetch(self, keys: list[Key]) -> dict[Key, Outcome]:
        started = time.monotonic()
        try:
            experiments = await self._experiment_ids()
        except LOOKUP_FAILURES as exc:
            return dict.fromkeys(keys, failure_of(exc))
        listed_at = self._experiments[0] if self._experiments is not None else started
        # The list may predate an experiment holding a run asked for (it was read at start-up,
        # or up to EXPERIMENTS_TTL_S ago): keys not found are searched again in the experiments
        # a new listing adds, if it adds any. (One wave of searches when everything is found.)
        # Until then a miss is provisional: not shared with other replicas.
        provisional = listed_at < started
        results = await self._search(keys, experiments, share_misses=not provisional)
        missed = [key for key, outcome in results.items() if outcome is None]
        if missed and provisional:
            try:
                current = await self._experiment_ids(listed_since=started)
            except LOOKUP_FAILURES:
                return results
            known = set(experiments)
            added = [experiment for experiment in current if experiment not in known]
            if added:
                results.update(await self._search(missed, added, shared=False))
            await self._share(
                {
                    key: out
                    for key in missed
                    if not isinstance(out := results[key], Unavailable | Refused)
                }
            )
        return results

    async def _search(
        self,
        keys: list[Key],
        experiments: list[str],
        *,
        share_misses: bool = True,
        shared: bool = True,
    ) -> dict[Key, Outcome]:
        """One concurrent wave: the run ids in one search, each workflow in its own. Runs found
        are shared with other replicas (misses too, with `share_misses`); with `shared` False
        the searches neither read nor wait for what other replicas share, nor publish."""
        share_misses = share_misses and shared
        run_ids = sorted({value for kind, value in keys if kind == "run"})
        workflows = sorted({value for kind, value in keys if kind == "workflow"})
        jobs: list[tuple[list[Key], Awaitable[dict[Key, Outcome]]]] = []
        if run_ids:
            jobs.append(
                (
                    [("run", r) for r in run_ids],
                    self._fetch_runs(run_ids, experiments, share=shared, share_misses=share_misses),
                )
            )
        for wf in workflows:
            jobs.append(
                (
                    [("workflow", wf)],
                    self._fetch_workflow(wf, experiments, shared=shared, share_misses=share_misses),
                )
            )
        outcomes = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
        results: dict[Key, Outcome] = {}
        for (job_keys, _), outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                results.update(dict.fromkeys(job_keys, failure_of(outcome)))
            else:
                results.update(outcome)
        return results

    async def _fetch_runs(
        self, run_ids: list[str], experiments: list[str], *, share: bool, share_misses: bool
    ) -> dict[Key, Outcome]:
        found = await self._call(
            "search_runs_by_id", lambda: self.backend.runs_by_id(run_ids, experiments)
        )
        self._saw(found)
        by_id = {run.run_id: ref_of(run) for run in found}
        outcomes: dict[Key, RunRef | None] = {}
        for run_id in run_ids:
            value = by_id.get(run_id)
            self._keep(("run", run_id), value)
            outcomes[("run", run_id)] = value
        if share:
            await self._share({k: v for k, v in outcomes.items() if v is not None or share_misses})
        return dict(outcomes)

    async def _fetch_workflow(
        self, workflow_id: str, experiments: list[str], *, shared: bool, share_misses: bool
    ) -> dict[Key, Outcome]:
        key: Key = ("workflow", workflow_id)

        async def search() -> RunRef | None:
            run = await self._call(
                "search_runs_by_workflow",
                lambda: self.backend.latest_run_for_workflow(workflow_id, experiments),
            )
            self._saw([run] if run is not None else [])
            return ref_of(run) if run is not None else None

        if self._shared_searches is None or self.shared is None or not shared:
            ref = await search()
        else:
            # One search per workflow across replicas; the others wait for its outcome (at
            # most the MLflow timeout: past it, SharedWaitTimeout makes this key UNAVAILABLE).
            name = self._shared_key(key)
            outcome = await self._shared_searches.run(
                name.removeprefix(self.shared.key()),
                read=lambda: self._read_shared(name),
                produce=lambda: self._searched(search),
                publish=lambda found: self._publish(key, found, share_misses=share_misses),
                wait_s=self.timeout_s,
            )
            ref = outcome.run
        self._keep(key, ref)
        return {key: ref}

    async def _publish(self, key: Key, found: _Shared, *, share_misses: bool) -> None:
        if found.run is not None or share_misses:
            await self._share({key: found.run})

    async def _read_shared(self, name: str) -> _Shared | None:
        assert self.shared is not None
        return await self.shared.get_json(name, _checked_shared, kind="lineage")

    async def _searched(self, search: Callable[[], Awaitable[RunRef | None]]) -> _Shared:
        ref = await search()
        return _Shared(ref, time.time() + self._ttl_of(ref))

    async def fetch_runs(self, run_ids: Sequence[str]) -> dict[str, Outcome]:
        """Search these runs now, cached or not (the run details need the whole runs, which
        `runs_seen` is told of): one batched search, plus one in experiments created since the
        listing for ids it missed. Within the same deadline as a lineage batch."""
        await self.until_warm()
        keys: list[Key] = [("run", run_id) for run_id in run_ids]
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                outcomes = await self._fetch(keys)
        except TimeoutError:
            outcomes = dict.fromkeys(keys, Unavailable("MLflow did not answer in time"))
        return {value: outcomes[(kind, value)] for kind, value in keys}

    async def fetch_workflow_runs(self, workflow_id: str) -> list[RunRecord]:
        """Every run tagged with this workflow id, newest first (up to WORKFLOW_RUNS_MAX).

        Raises MlflowUnavailableError, TimeoutError or CircuitOpenError when MLflow cannot say,
        MlflowRequestRefusedError when it refuses the search.
        The newest is the workflow's latest run: lineage keeps it as this workflow's outcome.
        """
        await self.until_warm()
        started = time.monotonic()

        async def search(experiments: list[str]) -> list[RunRecord]:
            return await self._call(
                "search_runs_by_workflow",
                lambda: self.backend.workflow_runs(
                    workflow_id, experiments, max_results=WORKFLOW_RUNS_MAX
                ),
            )

        async with asyncio.timeout(self.timeout_s * 2):
            experiments = await self._experiment_ids()
            listed_at = self._experiments[0] if self._experiments is not None else started
            runs = await search(experiments)
            if not runs and listed_at < started:
                # As in `_fetch`: the list may predate the experiment holding the runs.
                current = await self._experiment_ids(listed_since=started)
                added = [e for e in current if e not in set(experiments)]
                if added:
                    runs = await search(added)
        self._saw(runs)
        self._keep(("workflow", workflow_id), ref_of(runs[0]) if runs else None)
        return runs

    async def load_batch(self, keys: Sequence[Key]) -> list[Outcome]:
        """Outcomes of one batch of keys within one deadline: a slow MLflow costs at most that.

        Waits for the warm-up first (outside the deadline): opening the local store is the
        gateway's own start-up, not an MLflow outage.
        """
        await self.until_warm()
        with tracing.span("lineage.resolve", **{"lineage.batch_size": len(keys)}) as current:
            try:
                async with asyncio.timeout(self.timeout_s * 2):
                    outcomes = await self.lookup(keys)
            except TimeoutError:
                outcomes = [Unavailable("MLflow did not answer in time")] * len(keys)
            if current.is_recording():
                found = sum(isinstance(o, RunRef) for o in outcomes)
                failed = sum(isinstance(o, Unavailable) for o in outcomes)
                refused = sum(isinstance(o, Refused) for o in outcomes)
                current.set_attributes(
                    {
                        "lineage.found": found,
                        "lineage.not_found": len(outcomes) - found - failed - refused,
                        "lineage.unavailable": failed,
                        "lineage.refused": refused,
                    }
                )
                if failed:
                    tracing.mark_error("MLflow could not answer every lookup")
            return outcomes

    def resolve_kept(self, row: Artifact) -> Lineage | None:
        """The row's lineage from what this process keeps, when that decides it (stored ids,
        or every lookup it needs kept); None when a lookup must be made. Nothing is awaited:
        the batched path (a task, a DataLoader, `load_batch`) is for what is not kept."""
        candidates = [] if row.run_id and row.experiment_id else candidates_of(row)
        known: dict[Key, Outcome] = {}
        for _source, key in candidates:  # what is kept, up to the first that is not
            kept = self._cache.get(key)
            if kept is None:
                break
            known[key] = kept[0]
        step = decide(row, known, candidates)
        return step if isinstance(step, Lineage) else None

    async def resolve_rows(self, rows: Sequence[Artifact]) -> list[Lineage]:
        """Lineage of many rows, in rounds: each round looks up every row's next key at once."""
        known: dict[Key, Outcome] = {}
        while True:
            steps = [decide(row, known) for row in rows]
            wanted = sorted({step for step in steps if not isinstance(step, Lineage)})
            if not wanted:
                break
            known.update(zip(wanted, await self.load_batch(wanted), strict=True))
        lineages = [step for step in steps if isinstance(step, Lineage)]
        record = self.recorder()
        for row, lineage in zip(rows, lineages, strict=True):
            record(row, lineage)
        return lineages

    def recorder(self) -> ResolutionRecorder:
        """A recorder for one request or batch of resolutions (its logger bound once)."""
        return ResolutionRecorder(self._resolution_counter)

    def _resolution_counter(self, status: str, source: str) -> Counter:
        # One child per label pair, kept: `labels()` validates and locks on every call.
        child = self._resolution_counters.get((status, source))
        if child is None:
            child = self.metrics.lineage_resolutions.labels(status, source)
            self._resolution_counters[(status, source)] = child
        return child

    def clear_cache(self) -> None:
        """Forget cached lookups (after a repair, or in tests)."""
        self._cache.clear()
        self._experiments = None


def _checked_run(value: Any) -> RunRef | None:
    if not isinstance(value, dict) or set(value) != {"run_id", "experiment_id"}:
        return None
    run_id, experiment_id = value["run_id"], value["experiment_id"]
    if not isinstance(run_id, str) or not isinstance(experiment_id, str):
        return None
    if safe_run_ids([run_id, experiment_id]) != [run_id, experiment_id]:
        return None
    return RunRef(run_id, experiment_id)


def _checked_shared(value: Any) -> _Shared | None:
    """A shared lookup outcome as this gateway writes it, or None for anything else."""
    if not isinstance(value, dict) or set(value) != {"run", "until"}:
        return None
    until = value["until"]
    if isinstance(until, bool) or not isinstance(until, int | float):
        return None
    if value["run"] is None:
        return _Shared(None, float(until))
    run = _checked_run(value["run"])
    return _Shared(run, float(until)) if run is not None else None


def _checked_experiments(
    value: Any,
) -> tuple[float, list[str], dict[str, str | None]] | None:
    """A shared experiment list (when it was read, the ids, their names), or None for anything
    else (an older replica's list without names included: it is read again)."""
    if not isinstance(value, dict) or set(value) != {"listed_at", "ids", "names"}:
        return None
    listed_at, ids, names = value["listed_at"], value["ids"], value["names"]
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in names.items()
    ):
        return None
    if isinstance(listed_at, bool) or not isinstance(listed_at, int | float):
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    if safe_run_ids(ids) != ids:
        return None
    return float(listed_at), ids, {i: names.get(i) for i in ids}


# What a lookup raises when MLflow cannot answer (anything else is a bug).
OUTAGES = (MlflowUnavailableError, TimeoutError, CircuitOpenError)
# ... and when it answers by refusing the request.
LOOKUP_FAILURES = (*OUTAGES, MlflowRequestRefusedError)


def unavailable_of(exc: BaseException) -> Unavailable:
    """Why a lookup failed, as readers are told: the gateway's own words, never MLflow's
    (its text is logged where it is read: `mlflow.server_error`, `mlflow.refused`)."""
    if isinstance(exc, CircuitOpenError):
        return Unavailable("MLflow circuit open after repeated failures")
    if isinstance(exc, TimeoutError):
        return Unavailable("MLflow did not answer in time")
    if isinstance(exc, MlflowUnavailableError):
        return Unavailable(f"MLflow unavailable: {exc}")
    return Unavailable(f"MLflow lookup failed: {type(exc).__name__}")


def failure_of(exc: BaseException) -> Unavailable | Refused:
    """A failed lookup's outcome: Refused when MLflow refused it (4xx), else Unavailable."""
    if isinstance(exc, MlflowRequestRefusedError):
        return Refused()
    return unavailable_of(exc)
