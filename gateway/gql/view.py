"""Strawberry's ASGI view with the gateway's typed context and strict JSON both ways."""

from __future__ import annotations

from typing import Any

from cross_web import HTTPException as GraphQLHTTPError
from strawberry.asgi import GraphQL

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
        return dumps_bytes({"data": None, "errors": [error]})

    async def get_context(self, request: Any, response: Any) -> Context:
        services = services_of(request)
        return Context(
            request=request,
            response=response,
            services=services,
            lineage=RequestLineage(services.resolver),
        )


def graphql_app(settings: Settings) -> GatewayGraphQL:
    """The /graphql endpoint: guardrails always, GraphiQL and introspection outside production."""
    return GatewayGraphQL(
        build_schema(production=settings.production, max_query_cost=settings.max_query_cost),
        max_response_bytes=settings.max_response_mb * 1024 * 1024,
        graphql_ide=None if settings.production else "graphiql",
        allow_queries_via_get=True,
    )
