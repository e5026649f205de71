"""Strawberry's ASGI view with the gateway's typed context and strict JSON both ways."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, FormData
from cross_web import HTTPException as GraphQLHTTPError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.base import BaseRequestProtocol
from strawberry.http.parse_content_type import parse_content_type
from strawberry.types.unset import UNSET

from gateway.answers import AnswerKey
from gateway.gql.answers import Keeping, keeping
from gateway.gql.context import Context
from gateway.gql.encoding import encode_answer
from gateway.gql.schema import build_schema
from gateway.services import RequestLineage, services_of
from gateway.settings import Settings
from gateway.strictjson import RequestJSONError, dumps_bytes, loads_request


class GatewayGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI app with the gateway's typed context and strict JSON both ways."""

    def parse_json(self, data: str | bytes) -> Any:
        # Bodies (and GET `variables`) must be strict JSON objects; anything else is a 400 with
        # the reason, never a 500: `1`, invalid UTF-8, NaN, lone surrogates, deep nesting.
        try:
            value = loads_request(data)
        except RequestJSONError as exc:
            raise GraphQLHTTPError(400, f"Unable to parse request body as JSON: {exc}") from None
        if not isinstance(value, (dict, list)):
            raise GraphQLHTTPError(400, f"Expected a JSON object, got {type(value).__name__}")
        return value

    def __init__(self, *args: Any, max_response_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_response_bytes = max_response_bytes

    def encode_json(self, data: object) -> bytes:
        # Subscription and streamed messages (one result each); HTTP answers are encoded by
        # `_encoded`, off the loop's critical path.
        body = dumps_bytes(data)
        return body if len(body) <= self.max_response_bytes else self._too_large()

    def _too_large(self) -> bytes:
        # A clear error instead of a body no client should have to hold; never kept.
        limit_mb = self.max_response_bytes / (1024 * 1024)
        message = (
            f"the response would be more than GATEWAY_MAX_RESPONSE_MB ({limit_mb:g} MB): "
            "ask for fewer rows or fields"
        )
        error = {"message": message, "extensions": {"code": "RESPONSE_TOO_LARGE"}}
        verdict = keeping.get()
        if verdict is not None:
            verdict.allowed = False
        return dumps_bytes({"data": None, "errors": [error]})

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        # Strawberry calls this synchronously; the answer is encoded in `_encoded`, in pieces
        # with the loop turning, and only up to the cap (gateway/gql/encoding.py).
        return _Unencoded(response_data, sub_response)

    async def _encoded(self, pending: _Unencoded) -> Response:
        """The answer's response, as Strawberry's `create_response` builds it."""
        body = await encode_answer(pending.data, self.max_response_bytes)
        response = Response(
            body if body is not None else self._too_large(), media_type="application/json"
        )
        response.headers.raw.extend(pending.sub_response.headers.raw)
        if pending.sub_response.background:
            response.background = pending.sub_response.background
        if pending.sub_response.status_code:
            response.status_code = pending.sub_response.status_code
        return response

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> Any:
        # Media types are case-insensitive (RFC 9110 8.3.1), and a type is matched whole:
        # Strawberry looked for the text `application/json` inside the header, as sent.
        if request.method != "GET":
            media_type = parse_content_type(request.content_type or "")[0].strip().lower()
            if media_type != "application/json":
                raise GraphQLHTTPError(400, "Unsupported content type")
            request = _JSONRequest(request)
        return await super().parse_http_body(request)

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        # Accept's media types are case-insensitive too.
        accept = request.headers.get("accept", "").lower()
        return (
            request.method == "GET"
            and request.query_params.get("query") is None
            and any(kind in accept for kind in ("text/html", "*/*"))
        )

    async def run(  # type: ignore[override]
        self, request: Request | WebSocket, context: Any = UNSET, root_value: Any = UNSET
    ) -> Response | WebSocket:
        """Strawberry's handling, with kept answers (gateway/answers.py) in front of it: a
        request identical to one whose answer was kept gets that answer's body. HEAD is
        answered as GET is, without the body (RFC 9110 9.3.2)."""
        if not isinstance(request, Request):
            return await super().run(request, context, root_value)
        if request.method == "HEAD":
            return _without_body(
                await self._http(
                    Request({**request.scope, "method": "GET"}, request.receive),
                    context,
                    root_value,
                )
            )
        return await self._http(request, context, root_value)

    async def _http(self, request: Request, context: Any, root_value: Any) -> Response:
        services = services_of(request)
        if not services.answers.enabled:
            return await self._answer(request, context, root_value)
        key = await _answer_key(request)
        kept = await services.answers.wait_for_answer(key)
        services.metrics.answers.labels("graphql", "hit" if kept else "miss").inc()
        if kept is not None:
            return Response(kept, media_type="application/json")
        verdict = Keeping()
        token = keeping.set(verdict)
        try:
            with services.answers.answering(key):
                response = await self._answer(request, context, root_value)
                body = getattr(response, "body", None)  # a streamed answer has none: never kept
                if verdict.allowed and isinstance(body, bytes) and response.status_code == 200:
                    services.answers.keep(key, body)
        finally:
            keeping.reset(token)
        return response

    async def _answer(self, request: Request, context: Any, root_value: Any) -> Response:
        response = await super().run(request, context, root_value)
        if isinstance(response, _Unencoded):
            return await self._encoded(response)
        return response

    async def get_context(self, request: Any, response: Any) -> Context:
        services = services_of(request)
        return Context(
            request=request,
            response=response,
            services=services,
            lineage=RequestLineage(services.resolver),
        )


class _Unencoded(Response):
    """An answer Strawberry has built and the gateway has yet to encode."""

    def __init__(
        self, data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> None:
        super().__init__(b"", media_type="application/json")
        self.data = data
        self.sub_response = sub_response


class _JSONRequest(AsyncHTTPRequestAdapter):
    """A request adapter whose media type is the bare, lower-case `application/json`."""

    def __init__(self, request: AsyncHTTPRequestAdapter) -> None:
        self._request = request

    @property
    def method(self) -> Any:
        return self._request.method

    @property
    def query_params(self) -> Any:
        return self._request.query_params

    @property
    def path_params(self) -> Any:
        return self._request.path_params

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    @property
    def content_type(self) -> str:
        return "application/json"

    async def get_body(self) -> bytes:
        return await self._request.get_body()

    async def get_form_data(self) -> FormData:
        return await self._request.get_form_data()

    @property
    def url(self) -> str:
        return self._request.url

    @property
    def cookies(self) -> Mapping[str, str]:
        return self._request.cookies


def _without_body(response: Response) -> Response:
    """`response` as the answer to HEAD: its status and headers (Content-Length included)."""
    head = Response(status_code=response.status_code, background=response.background)
    head.raw_headers = list(response.raw_headers)
    return head


async def _answer_key(request: Request) -> AnswerKey:
    """The request as sent, in every part that can change its answer, as a SHA-256 digest (a
    256 KB body must not sit in memory as a key the byte budget does not see). The body is read
    once: Starlette keeps it for Strawberry."""
    digest = hashlib.sha256()
    headers = request.headers
    for part in (
        request.method,
        headers.get("content-type", ""),
        headers.get("accept", ""),
        request.url.query,
    ):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(await request.body())
    return ("graphql", digest.digest())


def graphql_app(settings: Settings, *, traced: bool = False) -> GatewayGraphQL:
    """The /graphql endpoint: guardrails always, GraphiQL and introspection outside production;
    operation spans when `traced`."""
    return GatewayGraphQL(
        build_schema(
            production=settings.production, max_query_cost=settings.max_query_cost, traced=traced
        ),
        max_response_bytes=settings.max_response_mb * 1024 * 1024,
        graphql_ide=None if settings.production else "graphiql",
        allow_queries_via_get=True,
    )
