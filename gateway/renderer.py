"""Chart renders in worker processes: a bounded pool, a bounded queue, and a deadline.

A queued render still answers within `GATEWAY_RENDER_TIMEOUT_S` (waiting counts), so a deep
queue cannot hold a request longer than one render deadline; past the queue bound, new renders
are refused at once (503 + Retry-After at the edge). A render past its deadline, or one whose
request was cancelled, is stopped: its worker process is terminated (`gateway.workers`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import chartkit
from chartkit import ChartSpec
from gateway import tracing
from gateway.errors import OverloadedError, RenderTimeoutError
from gateway.observability import Metrics
from gateway.settings import Settings
from gateway.workers import WorkerPool


class Renderer:
    """Renders chart PNGs with chartkit for one app (one per process)."""

    def __init__(self, *, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.timeout_s = settings.render_timeout_s
        self.max_snapshot_bars = settings.max_snapshot_bars
        self._pool = WorkerPool(workers=settings.render_concurrency)
        # Renders waiting or running; past this, new renders are refused instead of queued.
        self._slots = asyncio.Semaphore(max(settings.render_queue, 1))

    async def render(self, snapshot: Any, spec: ChartSpec) -> bytes:
        """PNG bytes; SnapshotError, OverloadedError (queue full) or RenderTimeoutError."""
        if self._slots.locked():
            raise OverloadedError("too many charts are being rendered; retry shortly")
        async with self._slots:
            started = time.perf_counter()
            # The trace context goes with the job: the worker's `chart.render` span is a child
            # of this request's span (nothing is added when tracing is off).
            job = self._pool.run(
                tracing.traced_job,
                tracing.carrier(),
                "chart.render",
                chartkit.render_chart,
                snapshot,
                spec,
                max_snapshot_bars=self.max_snapshot_bars,
            )
            try:
                # On timeout wait_for cancels the job, which terminates its worker.
                return await asyncio.wait_for(job, timeout=self.timeout_s)
            except TimeoutError:
                raise RenderTimeoutError("chart rendering timed out") from None
            finally:
                self.metrics.chart_render_seconds.observe(time.perf_counter() - started)

    def close(self) -> None:
        """Stop the worker processes (running renders are abandoned)."""
        self._pool.close()
