"""Recent answers to reads, served again for a few seconds.

A dashboard asks the same reads over and over: a page of 50 artifacts with lineage costs about
12 ms of CPU to read and resolve, a chart artifact's REST document about 3 ms (36 KB of snapshot
decoded and encoded again); the same answer, kept, costs a dictionary lookup. An answer that
came out whole (no errors) is kept for `GATEWAY_ANSWER_CACHE_S` seconds (0: off) and served as
is to identical reads in that time: what a read shows may be that many seconds old, as a
browser's or a CDN's cache would make it. A write made through this process (`repairLineage`)
forgets every kept answer of the process; other processes' answers age out within the TTL.

When a kept answer ages out under load, the identical reads that arrive while it is being worked
out again wait for that one answer (`wait_for_answer`) instead of each working it out: at 200
lists a second, a page that takes 50 ms to answer was otherwise answered ten times over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cachetools import TTLCache

# An answer larger than this is not kept (a few such would push the many small ones out).
MAX_ANSWER_BYTES = 256 * 1024
# What the kept answers of one process may hold in all.
MAX_ANSWERS_BYTES = 16 * 1024 * 1024

AnswerKey = tuple[str | bytes, ...]


class AnswerCache:
    """Encoded answers (strict JSON bodies) by the read that asked for them, bounded in bytes
    and in age."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int = MAX_ANSWERS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._answers: TTLCache[AnswerKey, bytes] = TTLCache(
            maxsize=max(1, max_bytes),
            ttl=max(ttl_s, 1e-9),
            timer=clock,
            getsizeof=lambda body: len(body) + 200,  # and about this much for key and entry
        )
        # Reads being answered now, each set when its answer is out (kept or not).
        self._answering: dict[AnswerKey, asyncio.Event] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key: AnswerKey) -> bytes | None:
        return self._answers.get(key) if self.enabled else None

    def keep(self, key: AnswerKey, body: bytes) -> None:
        """Keep an answer's body, unless answers are off or it is too large to be worth it."""
        if self.enabled and len(body) <= MAX_ANSWER_BYTES:
            self._answers[key] = body

    async def wait_for_answer(self, key: AnswerKey) -> bytes | None:
        """The kept answer to this read, waiting first for an identical read being answered now
        (at most as long as that read runs: its own deadline ends it); None when there is none
        to serve, and the caller answers the read itself."""
        body = self.get(key)
        running = self._answering.get(key)
        if body is None and running is not None:
            await running.wait()  # cancelling this wait cancels nothing else
            body = self.get(key)  # None: that answer was not kept (errors, too large)
        return body

    @contextmanager
    def answering(self, key: AnswerKey) -> Iterator[None]:
        """Marks a read as being answered, so identical reads wait for its answer."""
        if not self.enabled or key in self._answering:
            yield
            return
        done = asyncio.Event()
        self._answering[key] = done
        try:
            yield
        finally:
            del self._answering[key]
            done.set()

    def clear(self) -> None:
        """Forget every answer (after a write that changes what reads see)."""
        self._answers.clear()
