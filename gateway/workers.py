"""CPU-heavy work (chart renders, snapshot parsing) in worker processes, not serving threads.

A thread of the serving process holds its GIL while it parses or draws, so every request
waits behind it, and a thread cannot be stopped. pebble's `ProcessPool` gives what threads
cannot: a job whose caller gave up (deadline, client gone) is cancelled, and when it is already
running its worker process is terminated and replaced, so no CPU is burnt for nobody.

Workers are forked by a forkserver that imported chartkit once: forking the serving process
itself (which runs threads) is unsafe, and spawning a fresh interpreter per worker would cost
seconds of imports. They run at a lower OS priority than the serving process (`nice` +10: on a
busy core the server gets about ten times their CPU share), so on a busy machine answers come
before pictures; a render that cannot finish within its timeout is a 503 with Retry-After.
Not `SCHED_IDLE`: it runs a worker only when nothing else wants the CPU, and on a machine kept
busy by anything else (two spinning processes were enough) a detail page's render or parse
waited past its timeout. A pool starts its processes on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing import forkserver
from typing import Any, TypeVar

from pebble import ProcessPool

from gateway import tracing

T = TypeVar("T")
# Imported once by the forkserver; every worker forked from it starts with them loaded.
# A worker also re-runs the serving process's main script (multiprocessing's spawn rule): for
# `gateway serve` that is one `from gateway.cli import main`, which costs a fresh worker 0.4-0.6 s
# of CPU unless gateway.cli is already loaded, and a worker is fresh after every cancelled job.
# ("__main__" would say this generally, but Python 3.11's forkserver never receives the main
# path it needs for that and silently ignores it.)
PRELOAD = ["chartkit", "gateway.snapshots", "gateway.cli"]
# Added to the workers' niceness (0 = the serving process's priority, 19 = the lowest).
WORKER_NICENESS = 10


def _start_worker(niceness: int) -> None:
    # Where lowering is not allowed the worker keeps the server's priority, in its own process.
    with contextlib.suppress(OSError):
        os.nice(niceness)
    # A worker exports its own spans (traced jobs flush before they return).
    tracing.configure()


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_forkserver_soon() -> None:
    """Start this process's forkserver (it imports chartkit: a second or two) in a background
    thread, so the first render or parse does not wait for it. Idempotent."""

    def start() -> None:
        _context()
        forkserver.ensure_running()

    threading.Thread(target=start, name="forkserver-start", daemon=True).start()


class WorkerPool:
    """A bounded pool of worker processes; `run` awaits one job without blocking the loop."""

    def __init__(self, *, workers: int, niceness: int = WORKER_NICENESS) -> None:
        self.workers = max(workers, 1)
        self._pool = ProcessPool(
            max_workers=self.workers,
            initializer=_start_worker,
            initargs=(niceness,),
            context=_context(),
        )
        self._started = False

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)` in a worker; its exception, if it raises, is re-raised.

        Cancelling the awaiting task cancels the job: a queued one never starts, a running one
        has its worker terminated (pebble starts a new one). `function` and its arguments must
        be picklable (a module-level function and plain data).
        """
        schedule = functools.partial(self._pool.schedule, function, args=args, kwargs=kwargs)
        if self._started:
            future = schedule()
        else:
            # The first job starts the pool: forking its workers (and, the first time in this
            # process, the forkserver, which imports chartkit) must not block the event loop.
            starting = asyncio.ensure_future(asyncio.to_thread(schedule))
            try:
                future = await asyncio.shield(starting)
            except asyncio.CancelledError:
                starting.add_done_callback(_cancel_scheduled)
                raise
            self._started = True
        # wrap_future cancels the pebble future when this task is cancelled.
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop the workers (running jobs are abandoned) and wait for the pool's threads."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=5)


def _cancel_scheduled(starting: asyncio.Future[Any]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        starting.result().cancel()
