"""RequestDeadlineMiddleware: the deadline, a hang-up, and the late watcher, on plain ASGI calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.deadline import CLIENT_CLOSED, RequestDeadlineMiddleware

App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Connection:
    """A server's side of one request: scripted messages, then a disconnect on `hang_up`."""

    def __init__(self, *chunks: bytes) -> None:
        self.pending: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks or (b"",))
        ]
        self.gone = asyncio.Event()
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.reads += 1
        if self.pending:
            await asyncio.sleep(0)
            return self.pending.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self.gone.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None


def http_scope() -> Scope:
    return {"type": "http", "method": "POST", "path": "/p", "headers": [], "state": {}}


async def respond(send: Send, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message["body"]
        if not message["more_body"]:
            return body


def serve(
    app: App, connection: Connection, *, timeout_s: float = 5, watch_after_s: float = 0.01
) -> Scope:
    scope = http_scope()
    middleware = RequestDeadlineMiddleware(app, timeout_s=timeout_s, watch_after_s=watch_after_s)
    asyncio.run(middleware(scope, connection.receive, connection.send))
    return scope


def test_a_quick_request_has_no_watcher_reading_its_connection() -> None:
    connection = Connection(b"{}")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await respond(send)

    serve(app, connection, watch_after_s=10)
    assert connection.status == 200
    assert connection.reads == 1  # the app's own read, nobody else's


def test_a_slow_request_whose_client_hangs_up_is_cancelled_and_logged_as_499() -> None:
    connection = Connection(b"{}")
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        asyncio.get_running_loop().call_later(0.05, connection.hang_up)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise
        reached.append("finished")

    async def timed() -> float:
        started = asyncio.get_running_loop().time()
        scope = http_scope()
        middleware = RequestDeadlineMiddleware(app, timeout_s=5, watch_after_s=0.01)
        await middleware(scope, connection.receive, connection.send)
        assert scope["state"]["status_override"] == CLIENT_CLOSED
        return asyncio.get_running_loop().time() - started

    elapsed = asyncio.run(timed())
    assert reached == ["cancelled"]
    assert elapsed < 1.0
    assert connection.sent == []  # nothing is answered to a client that is gone


def test_a_hang_up_the_app_reads_itself_cancels_it_instead_of_raising() -> None:
    connection = Connection(b"part", b"rest")
    connection.pending.pop()  # the client goes after the first chunk
    connection.hang_up()
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            seen.append(await receive())

    scope = serve(app, connection, watch_after_s=10)
    assert [m["type"] for m in seen] == ["http.request"]  # never handed the disconnect
    assert scope["state"]["status_override"] == CLIENT_CLOSED


def test_a_body_read_after_the_watcher_started_arrives_whole_and_in_order() -> None:
    connection = Connection(b"a", b"b", b"c")
    bodies: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.05)  # the watcher has started and queued the chunks
        bodies.append(await read_body(receive))
        await respond(send, bodies[0])

    serve(app, connection, watch_after_s=0.01)
    assert bodies == [b"abc"]
    assert connection.status == 200


def test_a_watch_asked_for_during_a_read_starts_after_it() -> None:
    connection = Connection(b"a", b"b")
    slow_read = asyncio.Event()
    original = connection.receive

    async def slow_receive() -> Message:
        if not slow_read.is_set():
            slow_read.set()
            await asyncio.sleep(0.05)  # the watch is asked for while this read waits
        return await original()

    connection.receive = slow_receive  # type: ignore[method-assign]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, await read_body(receive))

    serve(app, connection, watch_after_s=0.01)
    assert connection.sent[-1]["body"] == b"ab"


def test_past_the_deadline_an_unstarted_response_is_a_503_with_retry_after() -> None:
    connection = Connection()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(5)

    serve(app, connection, timeout_s=0.05)
    assert connection.status == 503
    headers = dict(connection.sent[0]["headers"])
    assert headers[b"retry-after"] == b"1"
    body = json.loads(connection.sent[1]["body"])
    assert "GATEWAY_REQUEST_TIMEOUT_S (0.05 s)" in body["detail"]


def test_a_timeout_error_of_the_app_itself_is_not_taken_for_the_deadline() -> None:
    connection = Connection()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise TimeoutError("the app's own")

    with pytest.raises(TimeoutError, match="the app's own"):
        serve(app, connection)
    assert connection.sent == []


def test_a_disconnect_after_the_response_is_not_a_hang_up() -> None:
    connection = Connection()
    connection.hang_up()  # the server says "disconnect" once the response is complete

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)
        await asyncio.sleep(0.05)  # the watcher starts and reads that disconnect

    scope = serve(app, connection, watch_after_s=0.01)
    assert connection.status == 200
    assert "status_override" not in scope["state"]
