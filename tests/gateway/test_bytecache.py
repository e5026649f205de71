"""ByteCache and SingleFlight: bounded in bytes, one producer per key however many ask."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bytecache import ByteCache, SingleFlight


def test_concurrent_misses_for_one_key_run_one_producer() -> None:
    calls: list[str] = []

    async def scenario() -> list[tuple[bytes, bool]]:
        cache: ByteCache[str] = ByteCache(max_bytes=1024)

        async def produce() -> bytes:
            calls.append("produced")
            await asyncio.sleep(0.01)
            return b"png"

        return await asyncio.gather(*(cache.get_or_produce("k", produce) for _ in range(20)))

    results = asyncio.run(scenario())
    assert calls == ["produced"]
    assert {data for data, _ in results} == {b"png"}
    assert not any(hit for _, hit in results)  # all were misses, sharing one producer


def test_a_filled_key_is_a_hit() -> None:
    async def scenario() -> tuple[bool, bool]:
        cache: ByteCache[str] = ByteCache(max_bytes=1024)

        async def produce() -> bytes:
            return b"x"

        first = await cache.get_or_produce("k", produce)
        second = await cache.get_or_produce("k", produce)
        return first[1], second[1]

    assert asyncio.run(scenario()) == (False, True)


def test_a_failure_reaches_every_waiter_and_is_not_remembered() -> None:
    attempts: list[int] = []

    async def scenario() -> list[BaseException | tuple[int, bool]]:
        flight: SingleFlight[str, int] = SingleFlight()

        async def broken() -> int:
            attempts.append(1)
            await asyncio.sleep(0.01)
            raise ValueError("render failed")

        async def fixed() -> int:
            return 7

        failed = await asyncio.gather(
            *(flight.run("k", broken) for _ in range(5)), return_exceptions=True
        )
        assert not flight.running("k")
        return [*failed, await flight.run("k", fixed)]

    results = asyncio.run(scenario())
    assert attempts == [1]
    assert all(isinstance(r, ValueError) for r in results[:5])
    assert results[5] == (7, False)


def test_a_cancelled_waiter_does_not_cancel_the_producer() -> None:
    async def scenario() -> tuple[int, bool]:
        flight: SingleFlight[str, int] = SingleFlight()

        async def slow() -> int:
            await asyncio.sleep(0.05)
            return 1

        owner = asyncio.ensure_future(flight.run("k", slow))
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(flight.run("k", slow))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return await owner

    assert asyncio.run(scenario()) == (1, False)


def test_when_the_producers_caller_is_cancelled_a_waiter_produces_instead() -> None:
    started: list[str] = []

    async def scenario() -> tuple[bytes, bool]:
        flight: SingleFlight[str, bytes] = SingleFlight()

        async def produce() -> bytes:
            started.append("render")
            await asyncio.sleep(0.2)
            return b"png"

        first = asyncio.ensure_future(flight.run("k", produce))
        await asyncio.sleep(0.05)
        waiter = asyncio.ensure_future(flight.run("k", produce))
        await asyncio.sleep(0.05)
        first.cancel()  # the first client left: its render stops
        with pytest.raises(asyncio.CancelledError):
            await first
        return await waiter

    assert asyncio.run(scenario()) == (b"png", False)  # the waiter produced it itself
    assert started == ["render", "render"]


def test_the_cache_is_bounded_in_bytes_and_skips_values_larger_than_itself() -> None:
    cache: ByteCache[int] = ByteCache(max_bytes=10)
    for key in range(5):
        cache.put(key, b"abcd")
    kept = [key for key in range(5) if cache.get(key) is not None]
    assert kept == [3, 4]  # least recently used went first
    cache.put(99, b"x" * 11)
    assert cache.get(99) is None
