"""A consecutive-failure circuit breaker for MLflow calls (async; a clock seam for tests)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from gateway.mlflow_backend import MlflowUnavailableError

log = structlog.get_logger("gateway.lineage")
T = TypeVar("T")


class CircuitOpenError(Exception):
    """MLflow failed repeatedly; calls are short-circuited until the cool-down passes."""


class CircuitBreaker:
    """Consecutive-failure breaker: open after `threshold` failures, one trial after `cooldown_s`.

    Only outages count (MlflowUnavailableError: no connection, a 5xx; TimeoutError). A request
    MLflow refuses (MlflowRequestRefusedError, a 4xx) passes through uncounted, neither opening
    nor closing the circuit: MLflow answered, and a client must not be able to open it for all.
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
