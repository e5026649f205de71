"""Strawberry's ASGI view with the gateway's typed context and strict JSON both ways."""

from __future__ import annotations

import hashlib
from typing import Any

from cross_web import HTTPException as GraphQLHTTPError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.types.unset import UNSET

from gateway.answers import AnswerKey
from gateway.gql.answers import Keeping, keeping
from gateway.gql.context import Context
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
        body = dumps_bytes(data)
        if len(body) <= self.max_response_bytes:
            return body
        # A clear error instead of a body no client should have to hold.
        limit_mb = self.max_response_bytes / (1024 * 1024)
        message = (
            f"the response would be {len(body) / (1024 * 1024):.1f} MB, more than "
            f"GATEWAY_MAX_RESPONSE_MB ({limit_mb:g} MB): ask for fewer rows or fields"
        )
        error = {"message": message, "extensions": {"code": "RESPONSE_TOO_LARGE"}}
        verdict = keeping.get()
        if verdict is not None:
            verdict.allowed = False
        return dumps_bytes({"data": None, "errors": [error]})

    async def run(  # type: ignore[override]
        self, request: Request | WebSocket, context: Any = UNSET, root_value: Any = UNSET
    ) -> Response | WebSocket:
        """Strawberry's handling, with kept answers (gateway/answers.py) in front of it: a
        request identical to one whose answer was kept gets that answer's body."""
        if not isinstance(request, Request):
            return await super().run(request, context, root_value)
        services = services_of(request)
        if not services.answers.enabled:
            return await super().run(request, context, root_value)
        key = await _answer_key(request)
        kept = await services.answers.wait_for_answer(key)
        services.metrics.answers.labels("graphql", "hit" if kept else "miss").inc()
        if kept is not None:
            return Response(kept, media_type="application/json")
        verdict = Keeping()
        token = keeping.set(verdict)
        try:
            with services.answers.answering(key):
                response = await super().run(request, context, root_value)
                body = getattr(response, "body", None)  # a streamed answer has none: never kept
                if verdict.allowed and isinstance(body, bytes) and response.status_code == 200:
                    services.answers.keep(key, body)
        finally:
            keeping.reset(token)
        return response

    async def get_context(self, request: Any, response: Any) -> Context:
        services = services_of(request)
        return Context(
            request=request,
            response=response,
            services=services,
            lineage=RequestLineage(services.resolver),
        )


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
