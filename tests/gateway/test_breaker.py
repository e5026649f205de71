"""The circuit breaker, driven by a fake clock: no sleeps, every transition checked."""

from __future__ import annotations

import asyncio

import pytest

from gateway.breaker import CircuitBreaker, CircuitOpenError
from gateway.mlflow_backend import MlflowUnavailableError


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fail() -> None:
    raise MlflowUnavailableError("down")


async def succeed() -> str:
    return "ok"


def attempt(breaker: CircuitBreaker, fn: object) -> str:
    """What one call through the breaker ended in."""
    try:
        asyncio.run(breaker.call(fn))  # type: ignore[arg-type]
    except CircuitOpenError:
        return "short-circuited"
    except MlflowUnavailableError:
        return "failed"
    return "ok"


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=FakeClock())
    assert [attempt(breaker, fail) for _ in range(3)] == ["failed"] * 3
    assert breaker.is_open
    assert attempt(breaker, succeed) == "short-circuited"


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=FakeClock())
    outcomes = [attempt(breaker, fn) for fn in (fail, fail, succeed, fail, fail)]
    assert outcomes == ["failed", "failed", "ok", "failed", "failed"]
    assert not breaker.is_open


def test_after_the_cooldown_one_trial_closes_it_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    attempt(breaker, fail)
    clock.now += 9.9
    assert attempt(breaker, succeed) == "short-circuited"
    clock.now += 0.2
    assert attempt(breaker, succeed) == "ok"
    assert not breaker.is_open


def test_a_failed_trial_reopens_it_for_a_whole_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    attempt(breaker, fail)
    attempt(breaker, fail)
    clock.now += 10
    assert attempt(breaker, fail) == "failed"  # the trial
    clock.now += 9
    assert attempt(breaker, succeed) == "short-circuited"


def test_only_one_trial_runs_while_the_circuit_is_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=5, clock=clock)
    attempt(breaker, fail)
    clock.now += 5

    async def scenario() -> list[str]:
        release = asyncio.Event()

        async def slow_trial() -> str:
            await release.wait()
            return "ok"

        trial = asyncio.ensure_future(breaker.call(slow_trial))
        await asyncio.sleep(0)  # the trial is now running
        with pytest.raises(CircuitOpenError):
            await breaker.call(succeed)
        release.set()
        return [await trial]

    assert asyncio.run(scenario()) == ["ok"]
    assert not breaker.is_open


def test_other_errors_pass_through_uncounted() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=FakeClock())

    async def bug() -> None:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        asyncio.run(breaker.call(bug))
    assert not breaker.is_open
