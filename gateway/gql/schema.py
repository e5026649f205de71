"""The GraphQL schema: queries, mutations and the guardrails every operation passes."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterator
from inspect import isawaitable
from typing import Any

import strawberry
import structlog
from cachetools import LRUCache
from graphql import GraphQLError, OperationDefinitionNode, print_ast
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.extensions.tracing import OpenTelemetryExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext, Info

from gateway import repair, repository
from gateway.errors import GatewayError, InvalidInputError, NotFoundError, UnauthorizedError
from gateway.gql.answers import KeptAnswers
from gateway.gql.context import Context
from gateway.gql.cost import count_selections, operation_cost
from gateway.gql.cursors import decode_cursor
from gateway.gql.runs import Run, Workflow, run_from_view
from gateway.gql.selection import needs_json
from gateway.gql.types import (
    Artifact,
    ArtifactConnection,
    ArtifactKind,
    artifact_from_row,
    check_page_size,
    connection_of,
)
from gateway.run_graph import check_workflow_id, workflow_counts
from gateway.services import check_artifact_id, load_listed_artifact

MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2000
# Field selections per document: far above any real query, far below seconds of validation.
MAX_SELECTIONS = 100
DEFAULT_MAX_QUERY_COST = 1000
# Normalised documents remembered as valid, per schema.
VALID_DOCUMENTS_CACHED = 512
DEFAULT_PAGE = 50
MAX_REPAIR_IDS = 1000
DEFAULT_REPAIR_LIMIT = 1000
MAX_REPAIR_LIMIT = 10_000

log = structlog.get_logger("gateway.graphql")


@strawberry.type
class Query:
    @strawberry.field(description="One artifact by id; null when it does not exist.")
    async def artifact(self, info: Info[Context, None], id: int) -> Artifact | None:
        # Read as lists read rows: its snapshot is parsed (in a worker) only if asked for.
        try:
            row, listing = await load_listed_artifact(info.context.services, check_artifact_id(id))
        except NotFoundError:
            return None
        return artifact_from_row(row, listing)

    @strawberry.field(description="Artifacts in id order, filtered, paginated (max 100 a page).")
    async def artifacts(
        self,
        info: Info[Context, None],
        first: int = DEFAULT_PAGE,
        after: str | None = None,
        type: ArtifactKind | None = None,
        symbol: str | None = None,
        workflow_id: str | None = None,
        missing_lineage: bool | None = None,
    ) -> ArtifactConnection:
        check_page_size(first)
        after_id = decode_cursor(after) if after is not None else None
        page = await repository.run_in_session(
            info.context.services.engine,
            repository.list_artifacts,
            first=first,
            after_id=after_id,
            artifact_type=type.value if type is not None else None,
            symbol=symbol,
            workflow_id=workflow_id,
            missing_lineage=missing_lineage,
            # A page of names and ids reads no JSON column at all.
            with_json=needs_json(info.selected_fields),
        )
        return connection_of(page)

    @strawberry.field(
        description="An MLflow run by id; null when MLflow has no such run, an error when "
        "MLflow cannot be asked."
    )
    async def run(self, info: Info[Context, None], id: str) -> Run | None:
        view = await info.context.runs.by_id(id)
        return run_from_view(view) if view is not None else None

    @strawberry.field(
        description="A workflow by id; null when no artifact in the table belongs to it."
    )
    async def workflow(self, info: Info[Context, None], id: str) -> Workflow | None:
        counts = await workflow_counts(info.context.services, check_workflow_id(id))
        if counts.artifacts == 0:
            return None
        return Workflow(id=id, counts=counts)


RepairOutcomeEnum = strawberry.enum(repair.RepairOutcome, name="RepairOutcome")


@strawberry.type(description="One row handled by repairLineage.")
class RepairItem:
    artifact_id: int
    run_id: str | None
    experiment_id: str | None
    outcome: RepairOutcomeEnum  # type: ignore[valid-type]
    reason: str | None


@strawberry.type(
    description="What repairLineage did; in a dry run `repaired` counts would-be writes."
)
class RepairReport:
    dry_run: bool
    scanned: int
    repaired: int
    already_linked: int
    unresolved: int
    unavailable: int
    items: list[RepairItem]


def require_admin(ctx: Context) -> None:
    """Fail closed: no configured token, no header, or a wrong token is refused."""
    problem = ctx.services.settings.admin_token_problem()
    if problem is not None:
        raise UnauthorizedError(problem)
    configured = ctx.services.settings.admin_token
    assert configured is not None
    header = ctx.request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("admin token required: Authorization: Bearer <token>")
    if not hmac.compare_digest(token.strip().encode(), configured.get_secret_value().encode()):
        raise UnauthorizedError("invalid admin token")


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Admin: write resolved lineage back to rows that lack it.")
    async def repair_lineage(
        self,
        info: Info[Context, None],
        ids: list[int] | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> RepairReport:
        ctx = info.context
        require_admin(ctx)
        if ids is not None:
            if len(ids) > MAX_REPAIR_IDS:
                raise InvalidInputError(f"at most {MAX_REPAIR_IDS} ids per call")
            ids = [check_artifact_id(i, name="ids") for i in ids]
        if limit is not None and not 1 <= limit <= MAX_REPAIR_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_REPAIR_LIMIT}")
        report = await repair.repair_lineage(
            engine=ctx.services.engine,
            resolver=ctx.services.resolver,
            ids=ids,
            workflow_id=workflow_id,
            limit=limit if limit is not None else DEFAULT_REPAIR_LIMIT,
            dry_run=dry_run,
        )
        if report.repaired:
            ctx.services.answers.clear()  # kept answers show rows without the ids just written
        return RepairReport(
            dry_run=report.dry_run,
            scanned=report.scanned,
            repaired=report.repaired,
            already_linked=report.already_linked,
            unresolved=report.unresolved,
            unavailable=report.unavailable,
            items=[
                RepairItem(
                    artifact_id=i.artifact_id,
                    run_id=i.run_id,
                    experiment_id=i.experiment_id,
                    outcome=i.outcome,
                    reason=i.reason,
                )
                for i in report.items
            ],
        )


def is_client_error(error: GraphQLError) -> bool:
    """Syntax, validation and variable-coercion errors (graphql-core's own) and GatewayErrors
    are safe to show; everything else is masked in production."""
    original = error.original_error
    return original is None or isinstance(original, (GatewayError, GraphQLError))


class GatewaySchema(strawberry.Schema):
    """Schema that logs and counts each error once (`gateway_graphql_errors_total{kind}`)."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        context = execution_context.context if execution_context is not None else None
        metrics = context.services.metrics if isinstance(context, Context) else None
        for error in errors:
            if metrics is not None:
                kind = "client" if is_client_error(error) else "unexpected"
                metrics.graphql_errors.labels(kind).inc()
            if is_client_error(error):
                log.info("graphql.client_error", message=error.message, path=error.path)
            else:
                original = error.original_error
                log.error(
                    "graphql.unexpected_error",
                    message=error.message,
                    path=error.path,
                    exc_info=(type(original), original, original.__traceback__)
                    if original is not None
                    else None,
                )


_SUGGESTION = re.compile(r" Did you mean [^?]*\?")


class HideSuggestions(SchemaExtension):
    """Production: no "Did you mean ...?" in errors (with introspection off, they would list the
    schema's names one guess at a time)."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = [_without_suggestions(e) for e in result.errors]


def _without_suggestions(error: GraphQLError) -> GraphQLError:
    message = _SUGGESTION.sub("", error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


class QueryBudget(SchemaExtension):
    """Selections and cost are checked before validation runs (validation is where a document
    of repeated fields spends its seconds); past either bound, nothing is validated or read.

    Documents that passed validation are remembered by their normalised text (`print_ast`:
    no comments, no formatting), so `#1`, `#2`... variants of one query are validated once.
    (Strawberry's `ValidationCache` never hits here: its key includes the rule classes, and the
    depth/alias limiters build new ones for every operation.) Only success is remembered: an
    error's locations belong to the text that was sent.
    """

    def __init__(
        self,
        *,
        max_cost: int,
        valid_documents: LRUCache[str, bool],
        max_selections: int = MAX_SELECTIONS,
    ) -> None:
        super().__init__()
        self.max_cost = max_cost
        self.max_selections = max_selections
        self.valid_documents = valid_documents

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        # The spec's operation choice comes first: an ambiguous document is priced and run never.
        problem = _ambiguous_operation(context)
        if problem is not None:
            context.pre_execution_errors = [GraphQLError(problem)]
        elif (problem := self._problem()) is not None:
            context.pre_execution_errors = [
                GraphQLError(problem, extensions={"code": "QUERY_TOO_COSTLY"})
            ]
        elif context.graphql_document is not None:
            normalised = print_ast(context.graphql_document)
            if normalised in self.valid_documents:
                context.pre_execution_errors = []
            else:
                errors = validate_document(
                    context.schema._schema, context.graphql_document, context.validation_rules
                )
                if not errors:
                    self.valid_documents[normalised] = True
                context.pre_execution_errors = errors
        yield

    def _problem(self) -> str | None:
        context = self.execution_context
        document = context.graphql_document
        if document is None:
            return None
        selections = count_selections(document)
        if selections > self.max_selections:
            return (
                f"the document has {selections} field selections; "
                f"at most {self.max_selections} are allowed"
            )
        cost = operation_cost(document, context.operation_name, context.variables)
        if cost > self.max_cost:
            return (
                f"query cost {cost} exceeds the budget of {self.max_cost} "
                "(GATEWAY_MAX_QUERY_COST): ask for a smaller page or fewer costly fields"
            )
        return None


def _ambiguous_operation(context: ExecutionContext) -> str | None:
    """The GraphQL spec's GetOperation: without an operationName the document must hold exactly
    one operation. (Strawberry names the first one when none is given, and would run it.)"""
    document = context.graphql_document
    # `provided_operation_name` is an InitVar: what the client sent is kept under this name.
    if document is None or getattr(context, "_provided_operation_name", None) is not None:
        return None
    operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
    if operations > 1:
        return "Must provide operation name if query contains multiple operations."
    return None


class OperationSpans(OpenTelemetryExtension):
    """Strawberry's OpenTelemetry extension without a span per resolved field: the operation,
    parsing and validation spans stay; a page of 100 artifacts would otherwise make hundreds of
    spans whose time the domain spans (lineage, MLflow, renders, SQL) already show."""

    async def resolve(
        self, _next: Callable[..., Any], root: Any, info: Any, *args: Any, **kwargs: Any
    ) -> Any:
        result = _next(root, info, *args, **kwargs)
        if isawaitable(result):
            result = await result
        return result


def build_schema(
    *,
    production: bool = False,
    max_query_cost: int = DEFAULT_MAX_QUERY_COST,
    traced: bool = False,
) -> strawberry.Schema:
    """The schema with its guardrails; production adds error masking and no introspection,
    `traced` the GraphQL operation spans."""
    # Factories, not instances: strawberry builds fresh extensions for every operation.
    valid_documents: LRUCache[str, bool] = LRUCache(maxsize=VALID_DOCUMENTS_CACHED)
    extensions: list[Callable[[], SchemaExtension]] = [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: ParserCache(maxsize=256),
        lambda: QueryBudget(max_cost=max_query_cost, valid_documents=valid_documents),
        KeptAnswers,
    ]
    if traced:
        extensions.append(OperationSpans)
    if production:
        extensions += [
            DisableIntrospection,
            HideSuggestions,
            lambda: MaskErrors(should_mask_error=lambda e: not is_client_error(e)),
        ]
    return GatewaySchema(query=Query, mutation=Mutation, extensions=extensions)


def export_sdl() -> str:
    """The SDL checked in as schema.graphql."""
    sdl: str = build_schema().as_str()
    return sdl + "\n"
