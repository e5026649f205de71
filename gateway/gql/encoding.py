"""GraphQL answers encoded as JSON without holding the event loop, and never past the cap.

`json.dumps` is one C call that holds the GIL until the whole text exists: 15 aliases of a big
page made 172 MB in one go, and `/healthz` waited the second that took (a worker thread would
not help: the C encoder never releases the GIL). So an answer that may be large is encoded in
pieces of about `PIECE_CHARS`, each by the C encoder, the loop turning between pieces, and the
encoding stops as soon as the bytes made pass the cap: a refused answer costs one cap of memory.
Small answers (almost all) take one `dumps_bytes` call, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from gateway.strictjson import EncodedJSON, dumps_bytes

# Encoded at once (~0.3 ms of C encoder): the longest the loop waits for an answer's encoding.
PIECE_CHARS = 64 * 1024


async def encode_answer(value: Any, limit: int) -> bytes | None:
    """`dumps_bytes(value)`, made piece by piece with the loop turning in between; None as soon
    as the answer passes `limit` bytes. Same bytes as `dumps_bytes` for any value whose nesting
    is within `strictjson.MAX_DEPTH` (pieces are made strict one by one)."""
    if _estimate(value, PIECE_CHARS) <= PIECE_CHARS:
        body = dumps_bytes(value)
        return body if len(body) <= limit else None
    pieces: list[bytes] = []
    size = since_yield = 0
    for piece in _pieces(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return None
        since_yield += len(piece)
        if since_yield >= PIECE_CHARS:
            since_yield = 0
            await asyncio.sleep(0)
    return b"".join(pieces)  # one copy (a growing bytearray copied at every doubling)


# Lists longer than this are estimated from a few of their members, not walked whole.
_SAMPLED_LIST = 8


def _estimate(value: Any, budget: int, depth: int = 0) -> int:
    """About how many characters `value` encodes to, from its members' sizes where a list is
    long (the largest of its first, middle and last member, times its length): a walk of
    every member costs more than encoding a small answer does (a page of 50 artifacts: 166 us
    to walk, 141 us to encode). An answer it takes for small is at most one
    GATEWAY_MAX_RESPONSE_MB encoded at once; the large ones GraphQL makes are long lists."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, EncodedJSON):
        return len(value.text)
    if depth > 64:  # deeper than strict JSON nests: encoded at once, and refused there
        return 0
    if isinstance(value, dict):
        total = 2 + len(value)
        for key, child in value.items():
            total += (len(key) + 3 if isinstance(key, str) else 8) + _estimate(
                child, budget, depth + 1
            )
            if total > budget:
                break
        return total
    if isinstance(value, (list, tuple)):
        if len(value) <= _SAMPLED_LIST:
            total = 2 + len(value)
            for child in value:
                total += _estimate(child, budget, depth + 1)
                if total > budget:
                    break
            return total
        samples = (value[0], value[len(value) // 2], value[-1])
        return 2 + len(value) * (1 + max(_estimate(v, budget, depth + 1) for v in samples))
    return 8


def _size_hint(value: Any, budget: int) -> int:
    """About how many characters `value` encodes to, counted only until past `budget`."""
    total = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node) + 2
        elif isinstance(node, dict):
            total += 2 + len(node)
            for key, child in node.items():
                total += len(key) + 3 if isinstance(key, str) else 8
                stack.append(child)
        elif isinstance(node, (list, tuple)):
            total += 2 + len(node)
            stack.extend(node)
        elif isinstance(node, EncodedJSON):
            total += len(node.text)
        else:
            total += 8
        if total > budget:
            break
    return total


def _pieces(value: Any) -> Iterator[bytes]:
    """The encoding of `value` in pieces: containers larger than a piece are walked, runs of
    small members encoded together, one C encoder call each."""
    if isinstance(value, dict):
        yield b"{"
        yield from _members(list(value.items()), keyed=True)
        yield b"}"
    elif isinstance(value, (list, tuple)):
        yield b"["
        yield from _members(list(value), keyed=False)
        yield b"]"
    elif isinstance(value, EncodedJSON):
        text = value.text
        for start in range(0, len(text), PIECE_CHARS):
            yield text[start : start + PIECE_CHARS].encode("utf-8")
    else:
        yield dumps_bytes(value)


def _members(members: list[Any], *, keyed: bool) -> Iterator[bytes]:
    """A container's members, comma separated: each large one walked, small ones grouped."""
    separator = b""
    group: list[Any] = []
    group_chars = 0

    def flush() -> bytes:
        encoded = dumps_bytes(dict(group) if keyed else group)
        return encoded[1:-1]  # the group's members, without its brackets

    for member in members:
        child = member[1] if keyed else member
        chars = _size_hint(child, PIECE_CHARS)
        if chars <= PIECE_CHARS:
            group.append(member)
            group_chars += chars
            if group_chars >= PIECE_CHARS:
                yield separator + flush()
                separator, group, group_chars = b",", [], 0
            continue
        if group:
            yield separator + flush()
            separator, group, group_chars = b",", [], 0
        if keyed:
            yield separator + _key(member[0]) + b":"
        else:
            yield separator
        separator = b","
        yield from _pieces(child)
    if group:
        yield separator + flush()


def _key(key: Any) -> bytes:
    """A member name as `json` writes it (a non-string key is written as its JSON text)."""
    if isinstance(key, str):
        return dumps_bytes(key)
    return dumps_bytes({key: 0})[1:-3]
