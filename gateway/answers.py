"""Recent answers to reads, served again for a few seconds.

A dashboard asks the same reads over and over: a page of 50 artifacts with lineage costs about
12 ms of CPU to read and resolve, a chart artifact's REST document about 3 ms (36 KB of snapshot
decoded and encoded again); the same answer, kept, costs a dictionary lookup. An answer that
came out whole (no errors) is kept for `GATEWAY_ANSWER_CACHE_S` seconds (0: off) and served as
is to identical reads in that time: what a read shows may be that many seconds old, as a
browser's or a CDN's cache would make it. A write made through this process (`repairLineage`)
forgets every kept answer of the process; other processes' answers age out within the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key: AnswerKey) -> bytes | None:
        return self._answers.get(key) if self.enabled else None

    def keep(self, key: AnswerKey, body: bytes) -> None:
        """Keep an answer's body, unless answers are off or it is too large to be worth it."""
        if self.enabled and len(body) <= MAX_ANSWER_BYTES:
            self._answers[key] = body

    def clear(self) -> None:
        """Forget every answer (after a write that changes what reads see)."""
        self._answers.clear()
