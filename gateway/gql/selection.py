"""What a query selects under a connection's nodes: so a page reads only the columns it shows."""

from __future__ import annotations

from collections.abc import Iterable

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

# Artifact fields answered from the plain columns alone (no JSON column is read for them).
PLAIN_FIELDS = frozenset({"id", "name", "type", "symbol", "createdAt", "imageUrl", "__typename"})


def _fields(selections: Iterable[Selection]) -> list[SelectedField]:
    """The fields of a selection set, fragments flattened."""
    found: list[SelectedField] = []
    stack = list(selections)
    while stack:
        selection = stack.pop()
        if isinstance(selection, SelectedField):
            found.append(selection)
        elif isinstance(selection, (InlineFragment, FragmentSpread)):
            stack.extend(selection.selections)
    return found


def node_fields(connection: Iterable[Selection]) -> set[str]:
    """Names selected under `edges { node { ... } }` of a connection field (its own selection,
    as `info.selected_fields` gives it), fragments and aliases included."""
    names: set[str] = set()
    for field in _fields(connection):
        for edges in _fields(field.selections):
            if edges.name != "edges":
                continue
            for node in _fields(edges.selections):
                if node.name == "node":
                    names.update(child.name for child in _fields(node.selections))
    return names


def needs_json(connection: Iterable[Selection]) -> bool:
    """Whether a page's nodes ask for anything beyond the plain columns."""
    return not node_fields(connection) <= PLAIN_FIELDS
