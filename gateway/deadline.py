"""Every request ends: within GATEWAY_REQUEST_TIMEOUT_S, and soon after its client hangs up.

The app runs under an `asyncio.timeout`. A request still running after `WATCH_AFTER_S` gets a
watcher, which reads the connection's messages for it (queueing the body for the app) and
expires that timeout when the client disconnects, so no resolver, lookup, parse or render keeps
working for a client that is gone: parses and renders run in worker processes, and a cancelled
one has its process terminated (`gateway.workers`); a database read already in a thread
finishes its query, but nothing new starts. Past the deadline a response that has not started
is a 503 problem with Retry-After (an HTML page with it, for the paths of pages for people).

Why the watcher is late: almost every request is answered in a millisecond or two, and a
watcher task per request (with the cancel scope and queue it needs) cost more CPU than the
answer itself (0.19 ms of 0.25 ms for a kept answer, measured in process). A client that hangs
up within `WATCH_AFTER_S` leaves at most that much work done for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.problems import problem

log = structlog.get_logger("gateway")
# Client Closed Request (nginx's convention), for the access log and metrics.
CLIENT_CLOSED = 499
# How long a request runs before a watcher listens for its client hanging up.
WATCH_AFTER_S = 0.05

_DISCONNECT: Message = {"type": "http.disconnect"}


class ConnectionWatch:
    """The connection's messages for one request, read for the app until it runs long.

    Before `start`, the app's `receive` is the server's own. After it, one watcher task reads
    every message (body chunks are queued for the app) and calls `on_disconnect` when the
    client goes; the app's later reads come from that queue, then `http.disconnect` for good.
    If the app is inside a read when the watch is asked for, the watcher starts once that read
    returns: the server's `receive` has one reader at a time.
    """

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._reading = False
        self._wanted = False
        self._disconnected = False
        self._inbox: asyncio.Queue[Message] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        """The app's `receive`."""
        if self._disconnected:
            return _DISCONNECT
        if self._inbox is not None:
            return await self._inbox.get()
        self._reading = True
        try:
            message = await self._receive()
        finally:
            self._reading = False
        if message["type"] == "http.disconnect":
            self._hung_up()
            # The app is cancelled at its next await (Starlette would raise ClientDisconnect
            # from this very message, and that is not an error of the app's): wait for it.
            await asyncio.get_running_loop().create_future()
        if self._wanted:
            self._start()
        return message

    def start(self) -> None:
        """Watch from now on (or from the end of the app's current read)."""
        self._wanted = True
        if not self._reading:
            self._start()

    def _start(self) -> None:
        if self._watcher is None:
            self._inbox = asyncio.Queue()
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self._inbox))

    async def _watch(self, inbox: asyncio.Queue[Message]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._hung_up()
                inbox.put_nowait(_DISCONNECT)  # for a read already waiting
                return
            inbox.put_nowait(message)

    def _hung_up(self) -> None:
        self._disconnected = True
        self._on_disconnect()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


class RequestDeadlineMiddleware:
    """Cancel a request's work at its deadline or when its client disconnects."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout_s: float,
        watch_after_s: float = WATCH_AFTER_S,
        html_prefix: str | None = None,
        html_response: Callable[[Request, float], Response] | None = None,
    ):
        self.app = app
        self.timeout_s = timeout_s
        self.watch_after_s = watch_after_s
        # Pages for people answer their deadline with an HTML page, as they answer everything.
        self.html_prefix = html_prefix
        self.html_response = html_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = finished = disconnected = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        deadline = asyncio.timeout(self.timeout_s)
        running = False

        def cancel_on_hang_up() -> None:
            nonlocal disconnected
            # Servers also say "disconnect" once a response is complete: not a hang-up.
            disconnected = not finished
            if running and not deadline.expired():
                deadline.reschedule(loop.time())  # expire now: the app is cancelled

        watch = ConnectionWatch(receive, cancel_on_hang_up)
        timer = loop.call_later(self.watch_after_s, watch.start)
        try:
            async with deadline:
                running = True
                try:
                    await self.app(scope, watch.receive, tracking_send)
                finally:
                    running = False
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own, not the deadline's
        finally:
            timer.cancel()
            watch.stop()
        if disconnected and not started:
            log.info("http.client_disconnected", path=scope.get("path"))
            scope.setdefault("state", {})["status_override"] = CLIENT_CLOSED
            return
        if deadline.expired() and not started:
            log.warning("http.deadline_exceeded", path=scope.get("path"), timeout_s=self.timeout_s)
            path = scope.get("path", "")
            response: Response
            if (
                self.html_prefix is not None
                and self.html_response is not None
                and (path == self.html_prefix or path.startswith(self.html_prefix + "/"))
            ):
                response = self.html_response(Request(scope), self.timeout_s)
                response.headers["Retry-After"] = "1"
            else:
                limit = f"GATEWAY_REQUEST_TIMEOUT_S ({self.timeout_s:g} s)"
                response = problem(
                    503,
                    "Service Unavailable",
                    f"the request took longer than {limit}",
                    instance=path,
                    headers={"Retry-After": "1"},
                )
            await response(scope, receive, send)
