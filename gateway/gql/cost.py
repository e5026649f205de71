"""What a GraphQL document will cost, known before it is validated or executed.

Depth, alias and token limits bound the document; these bound the work it asks for:
- selections: every field selection in the document counts (validation is quadratic in
  overlapping selections, so a small document of repeated fields can cost seconds to validate);
- cost: each field that reads or computes something has a price, multiplied by the page size
  (`first`) of every list above it, and by its aliases (each alias is one more selection).

The prices (README, "Limits"): a row 1, `lineage`/`runId`/`experimentId`/`run` 1 (MLflow,
batched), `chartData` 2, `metadata` 5 (it carries the snapshot), `snapshotBars`/`snapshotRange`
20 (a snapshot parse), `workflow` 2 (two counts), `runs` 5 (a search), `repairLineage` 100;
everything else 0. Every list is priced by its real bound:
- every `artifacts` connection (the list, a run's, a workflow's) multiplies what it selects by
  its `first` (default 50, at most 100);
- a workflow's `runs` multiplies what it selects by its `first` (default and at most 200, what
  one search returns);
- a run's `params`, `metrics` and `tags` come from MLflow, which holds thousands of each: each
  entry a page can return costs 1 (`first`, default 100, at most 500), so a page of them is
  bounded in bytes too (a value is at most 8,000 characters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

FIELD_COST: dict[str, int] = {
    "artifact": 1,
    "node": 1,
    "lineage": 1,
    "runId": 1,
    "experimentId": 1,
    "run": 1,
    "workflow": 2,
    "runs": 5,
    "chartData": 2,
    "metadata": 5,
    "snapshotBars": 20,
    "snapshotRange": 20,
    "repairLineage": 100,
}
# List fields: their `first` argument (default, most allowed) multiplies everything selected
# below them. The bounds are the resolvers' own (types.MAX_PAGE, runs.WORKFLOW_RUNS_PAGE_MAX,
# runs.MAX_ENTRIES_PAGE); a test checks they agree.
LIST_DEFAULT_FIRST: dict[str, int] = {
    "artifacts": 50,
    "runs": 200,
    "params": 100,
    "metrics": 100,
    "tags": 100,
}
LIST_MAX_FIRST: dict[str, int] = {
    "artifacts": 100,
    "runs": 200,
    "params": 500,
    "metrics": 500,
    "tags": 500,
}
MAX_FIRST = LIST_MAX_FIRST["artifacts"]
# Lists whose every entry is work of its own (MLflow's, and bytes in the answer), selected or
# not: each costs this much on top of what is selected below it.
ENTRY_COST: dict[str, int] = {"params": 1, "metrics": 1, "tags": 1}
# Deeper than the depth limit allows; the walk stops there instead of recursing on.
MAX_WALK_DEPTH = 64


def count_selections(document: DocumentNode) -> int:
    """Field selections in the whole document, fragments included (an iterative walk)."""
    count = 0
    stack: list[SelectionSetNode] = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, (OperationDefinitionNode, FragmentDefinitionNode))
    ]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FieldNode):
                count += 1
            selection_set = getattr(selection, "selection_set", None)
            if selection_set is not None:
                stack.append(selection_set)
    return count


def _page_size(field: FieldNode, variables: Mapping[str, Any]) -> int:
    first = LIST_DEFAULT_FIRST[field.name.value]
    for argument in field.arguments or ():
        if argument.name.value != "first":
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            first = int(value.value)
        elif isinstance(value, VariableNode):
            given = variables.get(value.name.value)
            if isinstance(given, int) and not isinstance(given, bool):
                first = given
    return max(1, min(first, LIST_MAX_FIRST[field.name.value]))


def operation_cost(
    document: DocumentNode, operation_name: str | None, variables: Mapping[str, Any] | None
) -> int:
    """The cost of the operation that would run (0 when it cannot be told which one)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return 0  # validation reports the missing or ambiguous operation
    # A variable the request leaves out takes its definition's default (`$n: Int = 500`).
    given: dict[str, Any] = {}
    for definition in operations[0].variable_definitions or ():
        if isinstance(definition.default_value, IntValueNode):
            given[definition.variable.name.value] = int(definition.default_value.value)
    given.update(variables or {})
    walk = _CostWalk(document, given)
    return walk.cost(operations[0].selection_set, depth=0)


class _CostWalk:
    """Cost is linear in the multiplier, so each fragment is priced once, whatever the spreads."""

    def __init__(self, document: DocumentNode, variables: Mapping[str, Any]) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.variables = variables
        self.priced: dict[str, int] = {}
        self.pricing: set[str] = set()

    def cost(self, selection_set: SelectionSetNode, *, depth: int) -> int:
        if depth > MAX_WALK_DEPTH:
            return 0  # the depth limit refuses such a document during validation
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field(selection, depth)
            elif isinstance(selection, InlineFragmentNode):
                total += self.cost(selection.selection_set, depth=depth + 1)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(selection.name.value, depth)
        return total

    def _field(self, field: FieldNode, depth: int) -> int:
        name = field.name.value
        total = FIELD_COST.get(name, 0)
        if field.selection_set is not None:
            below = self.cost(field.selection_set, depth=depth + 1) + ENTRY_COST.get(name, 0)
            if name in LIST_DEFAULT_FIRST:
                below *= _page_size(field, self.variables)
            total += below
        return total

    def _fragment(self, name: str, depth: int) -> int:
        if name in self.priced:
            return self.priced[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self.pricing:
            return 0  # unknown or cyclic: validation refuses the document
        self.pricing.add(name)
        price = self.cost(fragment.selection_set, depth=depth + 1)
        self.pricing.discard(name)
        self.priced[name] = price
        return price
