"""Lineage resolution: which MLflow run made an artifact, resolved lazily and side-effect free.

Order (DESIGN.md): ids stored on the row -> STORED; a run id (row, else metadata.mlflow_run_id)
-> that run's experiment -> HYDRATED; a workflow id -> the latest run tagged workflow_id ->
HYDRATED; else UNRESOLVED with a reason; MLflow unreachable or too slow -> UNAVAILABLE.

Shared by GraphQL/REST reads (per-request `RequestLineage` with a DataLoader), the repair
mutation and CLI, and dags_utils. One `LineageResolver` per process holds the TTL cache and the
circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import structlog
from cachetools import TLRUCache
from strawberry.dataloader import DataLoader

from gateway.mlflow_backend import MlflowUnavailableError, RunRef, SearchBackend
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.rows import effective_workflow_id, metadata_run_id

log = structlog.get_logger("gateway.lineage")
T = TypeVar("T")
EXPERIMENTS_TTL_S = 60.0


class LineageStatus(enum.StrEnum):
    """How an artifact's lineage was obtained, or why not."""

    STORED = "STORED"
    HYDRATED = "HYDRATED"
    UNRESOLVED = "UNRESOLVED"
    UNAVAILABLE = "UNAVAILABLE"


class LineageSource(enum.StrEnum):
    """Where the run was found."""

    ROW = "row"
    METADATA_RUN_ID = "metadata_run_id"
    WORKFLOW_TAG = "workflow_tag"


@dataclass(frozen=True, slots=True)
class Lineage:
    """The resolved lineage of one artifact; ids are None unless STORED or HYDRATED."""

    status: LineageStatus
    source: LineageSource | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    reason: str | None = None

    @property
    def linked(self) -> bool:
        """Both ids are known."""
        return self.run_id is not None and self.experiment_id is not None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A lookup that MLflow could not answer (not cached)."""

    reason: str


Outcome: TypeAlias = RunRef | Unavailable | None
Key: TypeAlias = tuple[str, str]  # ("run", run_id) or ("workflow", workflow_id)


class CircuitOpenError(Exception):
    """MLflow failed repeatedly; calls are short-circuited until the cool-down passes."""


class CircuitBreaker:
    """Consecutive-failure breaker: open after `threshold` failures, one trial after `cooldown_s`.

    Small and async-native on purpose: the maintained breaker libraries are sync-first.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        """True while calls are being short-circuited."""
        return self._opened_at is not None and (
            self._trial_running or self._clock() - self._opened_at < self.cooldown_s
        )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` unless the circuit is open; count its success or failure."""
        trial = False
        if self._opened_at is not None:
            if self.is_open:
                raise CircuitOpenError("MLflow circuit open after repeated failures")
            trial = self._trial_running = True
        try:
            result = await fn()
        except (MlflowUnavailableError, TimeoutError):
            self._failures += 1
            if trial or self._failures >= self.threshold:
                if self._opened_at is None or trial:
                    log.warning(
                        "lineage.circuit_open", failures=self._failures, cooldown_s=self.cooldown_s
                    )
                self._opened_at = self._clock()
            raise
        finally:
            if trial:
                self._trial_running = False
        self._failures = 0
        self._opened_at = None
        return result


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
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._hit_ttl = hit_ttl_s
        self._miss_ttl = miss_ttl_s
        self._cache: TLRUCache[Key, RunRef | None] = TLRUCache(
            maxsize=cache_size, ttu=self._time_to_use
        )
        self._experiments: tuple[float, list[str]] | None = None
        self._semaphore = asyncio.Semaphore(concurrency)
        self._warm_up: asyncio.Task[None] | None = None
        self._warm_up_deadline = 0.0

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
        await self.backend.warm_up()
        log.info("lineage.warmed_up", duration_ms=round((time.perf_counter() - started) * 1000))

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
        """Cancel a warm-up still running (shutdown)."""
        if self._warm_up is not None:
            self._warm_up.cancel()

    def _time_to_use(self, _key: Key, value: RunRef | None, now: float) -> float:
        return now + (self._hit_ttl if value is not None else self._miss_ttl)

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
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
                finally:
                    self.metrics.mlflow_request_seconds.labels(operation, outcome).observe(
                        time.perf_counter() - started
                    )

        try:
            return await self.breaker.call(timed)
        except (MlflowUnavailableError, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("lineage.mlflow_error", operation=operation, error=reason)
            raise

    async def _experiment_ids(self) -> list[str]:
        now = time.monotonic()
        if self._experiments is not None and now - self._experiments[0] < EXPERIMENTS_TTL_S:
            return self._experiments[1]
        ids = await self._call("search_experiments", self.backend.experiment_ids)
        self._experiments = (now, ids)
        return ids

    async def lookup(self, keys: Sequence[Key]) -> list[Outcome]:
        """Outcomes for lookup keys: cached ones free, run ids in one search, workflows each."""
        results: dict[Key, Outcome] = {}
        missing: list[Key] = []
        for key in keys:
            if key in self._cache:
                results[key] = self._cache[key]
            else:
                missing.append(key)
        if missing:
            results.update(await self._fetch(missing))
        return [results[key] for key in keys]

    async def _fetch(self, keys: list[Key]) -> dict[Key, Outcome]:
        try:
            experiments = await self._experiment_ids()
        except (MlflowUnavailableError, TimeoutError, CircuitOpenError) as exc:
            return dict.fromkeys(keys, _unavailable(exc))
        run_ids = sorted({value for kind, value in keys if kind == "run"})
        workflows = sorted({value for kind, value in keys if kind == "workflow"})
        jobs: list[tuple[list[Key], Awaitable[dict[Key, Outcome]]]] = []
        if run_ids:
            jobs.append(([("run", r) for r in run_ids], self._fetch_runs(run_ids, experiments)))
        for wf in workflows:
            jobs.append(([("workflow", wf)], self._fetch_workflow(wf, experiments)))
        outcomes = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
        results: dict[Key, Outcome] = {}
        for (job_keys, _), outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                results.update(dict.fromkeys(job_keys, _unavailable(outcome)))
            else:
                results.update(outcome)
        return results

    async def _fetch_runs(self, run_ids: list[str], experiments: list[str]) -> dict[Key, Outcome]:
        found = await self._call(
            "search_runs_by_id", lambda: self.backend.runs_by_id(run_ids, experiments)
        )
        by_id = {ref.run_id: ref for ref in found}
        results: dict[Key, Outcome] = {}
        for run_id in run_ids:
            value = by_id.get(run_id)
            self._cache[("run", run_id)] = value
            results[("run", run_id)] = value
        return results

    async def _fetch_workflow(self, workflow_id: str, experiments: list[str]) -> dict[Key, Outcome]:
        ref = await self._call(
            "search_runs_by_workflow",
            lambda: self.backend.latest_run_for_workflow(workflow_id, experiments),
        )
        self._cache[("workflow", workflow_id)] = ref
        return {("workflow", workflow_id): ref}

    def request(self) -> RequestLineage:
        """A per-request view: one DataLoader, each artifact resolved at most once."""
        return RequestLineage(self)

    async def resolve_rows(self, rows: Sequence[Artifact]) -> list[Lineage]:
        """Lineage of many rows with batched lookups (repair, CLI, dags_utils)."""
        scope = self.request()
        return list(await asyncio.gather(*(scope.of(row) for row in rows)))

    def clear_cache(self) -> None:
        """Forget cached lookups (after a repair, or in tests)."""
        self._cache.clear()
        self._experiments = None


def _unavailable(exc: BaseException) -> Unavailable:
    if isinstance(exc, CircuitOpenError):
        return Unavailable("MLflow circuit open after repeated failures")
    if isinstance(exc, TimeoutError):
        return Unavailable("MLflow did not answer in time")
    if isinstance(exc, MlflowUnavailableError):
        return Unavailable(f"MLflow unavailable: {exc}")
    return Unavailable(f"MLflow lookup failed: {type(exc).__name__}")


class RequestLineage:
    """Resolves artifacts for one request; lookups are batched by a DataLoader."""

    def __init__(self, resolver: LineageResolver) -> None:
        self.resolver = resolver
        self._loader: DataLoader[Key, Outcome] = DataLoader(load_fn=self._load)
        self._memo: dict[int, asyncio.Task[Lineage]] = {}

    async def _load(self, keys: list[Key]) -> list[Outcome]:
        await self.resolver.until_warm()
        # One deadline for the whole batch: a slow MLflow costs a request at most this long.
        budget = self.resolver.timeout_s * 2
        try:
            async with asyncio.timeout(budget):
                return await self.resolver.lookup(keys)
        except TimeoutError:
            return [Unavailable("MLflow did not answer in time")] * len(keys)

    def of(self, row: Artifact) -> Awaitable[Lineage]:
        """The row's lineage; several fields of one artifact share a single resolution."""
        key = row.id if row.id is not None else id(row)
        task = self._memo.get(key)
        if task is None:
            task = asyncio.ensure_future(self._resolve(row))
            self._memo[key] = task
        return task

    async def _resolve(self, row: Artifact) -> Lineage:
        lineage = await resolve_row(row, self._loader.load)
        self.resolver.metrics.lineage_resolutions.labels(
            lineage.status.value, lineage.source.value if lineage.source else "none"
        ).inc()
        fields: dict[str, Any] = {
            "artifact_id": row.id,
            "workflow_id": effective_workflow_id(row),
            "run_id": lineage.run_id,
        }
        if lineage.status is LineageStatus.HYDRATED:
            log.info("lineage.hydrated", source=lineage.source, **fields)
        elif lineage.status is LineageStatus.UNRESOLVED:
            log.info("lineage.unresolved", reason=lineage.reason, **fields)
        elif lineage.status is LineageStatus.UNAVAILABLE:
            log.warning("lineage.unavailable", reason=lineage.reason, **fields)
        return lineage


async def resolve_row(row: Artifact, load: Callable[[Key], Awaitable[Outcome]]) -> Lineage:
    """Apply the resolution order to one row, loading runs through `load`."""
    if row.run_id and row.experiment_id:
        return Lineage(LineageStatus.STORED, LineageSource.ROW, row.run_id, row.experiment_id)
    candidates: list[tuple[LineageSource, Key]] = []
    if row.run_id:
        candidates.append((LineageSource.ROW, ("run", row.run_id)))
    else:
        meta_run = metadata_run_id(row)
        if meta_run:
            candidates.append((LineageSource.METADATA_RUN_ID, ("run", meta_run)))
        workflow_id = effective_workflow_id(row)
        if workflow_id:
            candidates.append((LineageSource.WORKFLOW_TAG, ("workflow", workflow_id)))
    if not candidates:
        return Lineage(LineageStatus.UNRESOLVED, reason="artifact has no run id and no workflow id")
    reasons = []
    for source, key in candidates:
        outcome = await load(key)
        if isinstance(outcome, RunRef):
            return Lineage(LineageStatus.HYDRATED, source, outcome.run_id, outcome.experiment_id)
        if isinstance(outcome, Unavailable):
            return Lineage(LineageStatus.UNAVAILABLE, source, reason=outcome.reason)
        kind, value = key
        reasons.append(
            f"MLflow run {value} not found"
            if kind == "run"
            else f"no MLflow run tagged workflow_id={value}"
        )
    return Lineage(LineageStatus.UNRESOLVED, reason="; ".join(reasons))


def run_url(ui_url: str | None, lineage: Lineage) -> str | None:
    """MLflow UI link to the run, when both ids and a UI base are known."""
    if ui_url and lineage.linked:
        return f"{ui_url.rstrip('/')}/#/experiments/{lineage.experiment_id}/runs/{lineage.run_id}"
    return None


def experiment_url(ui_url: str | None, lineage: Lineage) -> str | None:
    """MLflow UI link to the experiment."""
    if ui_url and lineage.experiment_id is not None:
        return f"{ui_url.rstrip('/')}/#/experiments/{lineage.experiment_id}"
    return None
