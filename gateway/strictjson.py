"""Strict JSON at every edge: stored values read safely, every answer RFC 8259 and UTF-8.

Other writers put things in the JSON columns that Python's `json` accepts but JSON does not:
`NaN` / `Infinity`, lone UTF-16 surrogate escapes (`"\\ud800"`), nesting thousands of levels
deep. The mapping, applied when a stored value is read and again, as a safety net, when any
answer is written:

- a non-finite number reads as `null`;
- a lone surrogate reads as U+FFFD (the Unicode replacement character);
- a value nested deeper than `MAX_DEPTH` levels cannot be read at all: it becomes an
  `UnreadableJSON` holding the reason, and the field that holds it answers null with that
  reason (a GraphQL error on that field, `field_errors` in REST) while the rest of the row and
  page are served.

Client bodies are held to the same rules, but refused instead of repaired (`RequestJSONError`).

A large stored value can be made strict elsewhere (`restrict_value`, in a worker process: see
`gateway.restricted`) and spliced into an answer as text (`EncodedJSON`): the serving process
never decodes it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

# Deeper than anything this service's writers produce (a snapshot is 3 levels) and far below
# the interpreter's recursion limit, so no reader, encoder or template can overflow on it.
MAX_DEPTH = 64

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A `\uD8xx`..`\uDFxx` escape in JSON text; only then can a decoded string hold a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True, slots=True)
class UnreadableJSON:
    """A stored JSON value that cannot be served; `reason` says why, in words for a client."""

    reason: str


@dataclass(frozen=True, slots=True)
class EncodedJSON:
    """Strict, compact JSON text made elsewhere; `dumps_bytes` puts it into an answer as is."""

    text: str


class RequestJSONError(ValueError):
    """A client body is not strict JSON (bad UTF-8, NaN, lone surrogate, too deep, syntax)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _null_constant(_name: str) -> None:
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: safe on any depth)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _too_deep(value: Any, text: str) -> bool:
    # Depth can only exceed the limit when there are more brackets than the limit; two C-speed
    # counts spare the walk for small values.
    if not isinstance(value, (dict, list)) or text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    return _depth_exceeds(value, MAX_DEPTH)


def replace_lone_surrogates(text: str) -> str:
    """`text` with every lone UTF-16 surrogate replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _clean_strings(value: Any) -> Any:
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, dict):
        return {_clean_strings(k): _clean_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_strings(v) for v in value]
    return value


def loads_stored(raw: str | bytes | bytearray | memoryview) -> Any:
    """A stored JSON value under the mapping above; `UnreadableJSON` when it cannot be read.

    Raises `json.JSONDecodeError` when the text is not JSON at all (callers decide what that
    means for their column).
    """
    text = bytes(raw).decode("utf-8", "replace") if not isinstance(raw, str) else raw
    try:
        value = json.loads(text, parse_constant=_null_constant)
    except RecursionError:
        return UnreadableJSON(f"nested deeper than {MAX_DEPTH} levels")
    if _too_deep(value, text):
        return UnreadableJSON(f"nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text):
        value = _clean_strings(value)
    return value


def loads_request(raw: str | bytes | bytearray | memoryview) -> Any:
    """A client's JSON body, or `RequestJSONError` naming what is wrong with it."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestJSONError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestJSONError(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RequestJSONError(f"body is not JSON: {message}") from None
    if _too_deep(value, text):
        raise RequestJSONError(f"JSON is nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) and _clean_strings(value) != value:
        raise RequestJSONError("JSON holds a lone UTF-16 surrogate (not a Unicode character)")
    return value


def sanitize(value: Any, *, _depth: int = 1) -> Any:
    """`value` made encodable as strict JSON: the mapping above, applied to Python values.

    Non-finite floats become None, lone surrogates U+FFFD, containers deeper than MAX_DEPTH
    None, and anything `json` cannot encode its `str()`.
    """
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple)):
        if _depth > MAX_DEPTH:
            return None
        if isinstance(value, dict):
            return {
                replace_lone_surrogates(str(k)): sanitize(v, _depth=_depth + 1)
                for k, v in value.items()
            }
        return [sanitize(v, _depth=_depth + 1) for v in value]
    if isinstance(value, UnreadableJSON):
        return None
    if isinstance(value, EncodedJSON):
        return value  # strict already
    return replace_lone_surrogates(str(value))


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value` (RFC 8259, encodable as UTF-8), never raising on odd values.

    The fast path is plain `json.dumps`; only a value it refuses is sanitized first.
    """
    kwargs.setdefault("ensure_ascii", False)
    kwargs.pop("allow_nan", None)
    try:
        text = json.dumps(value, allow_nan=False, **kwargs)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        # UnicodeEncodeError is a ValueError: a lone surrogate somewhere in the value.
        kwargs.pop("default", None)
        text = json.dumps(sanitize(value), allow_nan=False, **kwargs)
    return text


def _compact(value: Any, default: Any = None) -> str:
    return json.dumps(
        value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=default
    )


# A placeholder as `json.dumps` writes it (NUL escaped): a nonce, then the fragment's index.
# One pattern for every call: compiling one per nonce cost 0.3 ms an answer.
_PLACEHOLDER = re.compile(r'"\\u0000([0-9a-f]{24}):([0-9]+)\\u0000"')


def dumps_bytes(value: Any) -> bytes:
    """Compact strict JSON as UTF-8 bytes (HTTP bodies); one encode on the fast path.

    `EncodedJSON` values are spliced in as their text: each is written as a placeholder string
    holding a random nonce (control characters come out escaped, so no stored string can spell
    it), then replaced.
    """
    fragments: list[str] = []
    nonce = secrets.token_hex(12)

    def placeholder(obj: Any) -> str:
        if isinstance(obj, EncodedJSON):
            fragments.append(obj.text)
            return f"\x00{nonce}:{len(fragments) - 1}\x00"
        raise TypeError(f"{type(obj).__name__} is not JSON")

    try:
        text = _compact(value, placeholder)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        fragments.clear()
        text = _compact(sanitize(value), placeholder)
    if fragments:

        def splice(match: re.Match[str]) -> str:
            # A stored string spelling a placeholder cannot know this call's nonce.
            if match.group(1) != nonce:
                return match.group(0)
            return fragments[int(match.group(2))]

        text = _PLACEHOLDER.sub(splice, text)
    return text.encode("utf-8")


def restrict_value(value: Any) -> EncodedJSON | UnreadableJSON:
    """A value read by `loads_stored` as strict compact JSON text, to be spliced into answers."""
    if isinstance(value, UnreadableJSON):
        return value
    try:  # loads_stored's mapping already made it strict: the walk is only a safety net
        text = _compact(value)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        text = _compact(sanitize(value))
    return EncodedJSON(text)


def storable_problem(value: Any, *, root: str) -> str | None:
    """Why `value` would not be strict JSON once stored, naming the key path; None when fine.

    What writers must not store: non-finite numbers (Python writes them as `NaN`), lone
    surrogates, nesting deeper than MAX_DEPTH, and values JSON has no type for.
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return f"{path} is {node}, which JSON cannot hold (store null, or leave the key out)"
        if isinstance(node, str) and _LONE_SURROGATE.search(node):
            return f"{path} holds a lone UTF-16 surrogate, which is not a Unicode character"
        if isinstance(node, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                return f"{path} is nested deeper than {MAX_DEPTH} levels"
            if isinstance(node, dict):
                for key, child in node.items():
                    if not isinstance(key, str):
                        return f"{path} has a key {key!r} that is not a string"
                    if _LONE_SURROGATE.search(key):
                        return f"{path} has a key holding a lone UTF-16 surrogate"
                    stack.append((child, f"{path}.{key}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node))
        elif not (node is None or isinstance(node, (str, bool, int, float))):
            return f"{path} is a {type(node).__name__}, which is not a JSON value"
    return None


def dumps_stored(value: Any) -> str:
    """JSON text to store in a column: refuses non-finite numbers instead of writing `NaN`."""
    return json.dumps(value, allow_nan=False)
