"""Kept answers for GraphQL queries (`gateway/answers.py` says what is kept, and how long).

Runs around execution only: a document is parsed, limited, priced and validated on every
request, so what the gateway refuses is refused every time, kept answer or not. Mutations are
never kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from gateway.answers import AnswerKey, canonical_variables
from gateway.gql.context import Context
from gateway.strictjson import EncodedJSON, dumps_bytes


class KeptAnswers(SchemaExtension):
    """Serves a kept answer instead of executing a query; keeps answers that had no errors."""

    def on_execute(self) -> Iterator[None]:
        execution = self.execution_context
        context = execution.context
        if (
            not isinstance(context, Context)
            or not context.services.answers.enabled
            or execution.query is None
            or execution.operation_type is not OperationType.QUERY
        ):
            yield
            return
        answers = context.services.answers
        variables = canonical_variables(execution.variables)
        key: AnswerKey = ("graphql", execution.query, execution.operation_name, variables)
        kept = answers.get(key)
        context.services.metrics.answers.labels("graphql", "hit" if kept else "miss").inc()
        if kept is not None:
            # Strawberry does not execute an operation whose result an extension has set.
            execution.result = GraphQLExecutionResult(data=EncodedJSON(kept))  # type: ignore[arg-type]
            yield
            return
        yield
        result = execution.result
        if isinstance(result, GraphQLExecutionResult) and not result.errors and result.data:
            answers.keep(key, dumps_bytes(result.data).decode("utf-8"))
