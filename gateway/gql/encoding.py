"""GraphQL answers encoded as JSON without holding the event loop, and never past the cap.

`json.dumps` is one C call that holds the GIL until the whole text exists: 15 aliases of a big
page made 172 MB in one go, and `/healthz` waited the second that took (a worker thread would
not help: the C encoder never releases the GIL). So an answer is encoded in pieces, each by the
C encoder, the loop turning whenever about `PIECE_CHARS` have been made, and the encoding stops
as soon as the bytes made pass the cap: a refused answer costs one cap of memory.

Nothing is walked ahead to guess an answer's size (a walk of a page of 50 artifacts costs more
than encoding it, and a sampled guess can be fooled by the rows it does not sample). Lists, where
large answers come from, are encoded a slice of members at a time, the slice sized by what the
last one made: it shrinks towards one member as members prove large, and a single member that
is itself large is walked the same way. A small answer takes a handful of encoder calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from gateway.strictjson import dumps_bytes

# About what the loop waits for between turns (~0.3 ms of C encoder).
PIECE_CHARS = 64 * 1024
# Members of a list encoded in one call at first; the slice grows while slices stay small.
FIRST_SLICE = 16
MAX_SLICE = 1024
# Dicts this deep or deeper, and members of lists, are encoded whole unless they prove large:
# GraphQL nests answers as data -> field -> connection -> edges.
_WALKED_DEPTH = 4
# Deeper than strict JSON nests: encoded at once (and made strict there).
_MAX_DEPTH = 64


async def encode_answer(value: Any, limit: int) -> bytes | None:
    """`dumps_bytes(value)`, made piece by piece with the loop turning in between; None as soon
    as the answer passes `limit` bytes. Same bytes as `dumps_bytes` for any value whose nesting
    is within `strictjson.MAX_DEPTH` (pieces are made strict one by one)."""
    pieces: list[bytes] = []
    size = since_turn = 0
    for piece in _pieces(value, 0):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return None
        since_turn += len(piece)
        if since_turn >= PIECE_CHARS:
            since_turn = 0
            await asyncio.sleep(0)
    return b"".join(pieces)  # one copy (a growing bytearray copied at every doubling)


def _pieces(value: Any, depth: int, *, large: bool = False) -> Iterator[bytes]:
    """The encoding of `value` in pieces; `large`: it proved large, so its dicts are walked at
    any depth too."""
    if depth < _MAX_DEPTH and isinstance(value, (list, tuple)) and value:
        yield from _list_pieces(value, depth)
    elif depth < _MAX_DEPTH and isinstance(value, dict) and value:
        if large or depth < _WALKED_DEPTH:
            yield from _dict_pieces(value, depth, large=large)
        else:
            yield dumps_bytes(value)
    else:
        yield dumps_bytes(value)


def _dict_pieces(value: dict[Any, Any], depth: int, *, large: bool) -> Iterator[bytes]:
    """A dict's members: runs of scalars in one call, containers each in pieces of their own."""
    yield b"{"
    separator = b""
    scalars: dict[Any, Any] = {}
    for key, child in value.items():
        if not isinstance(child, (list, tuple, dict)):
            scalars[key] = child
            continue
        if scalars:
            yield separator + dumps_bytes(scalars)[1:-1]
            separator, scalars = b",", {}
        yield separator + _key(key) + b":"
        separator = b","
        yield from _pieces(child, depth + 1, large=large)
    if scalars:
        yield separator + dumps_bytes(scalars)[1:-1]
    yield b"}"


def _list_pieces(value: list[Any] | tuple[Any, ...], depth: int) -> Iterator[bytes]:
    """A list's members, a slice per encoder call, the slice sized by what the last one made."""
    yield b"["
    separator = b""
    start, step = 0, FIRST_SLICE
    while start < len(value):
        if step == 1 and isinstance(value[start], (list, tuple, dict)):
            # A member as large as a piece on its own: walked in pieces like the answer.
            yield separator
            yield from _pieces(value[start], depth + 1, large=True)
            made = PIECE_CHARS
            start += 1
        else:
            members = value[start : start + step]
            encoded = dumps_bytes(list(members))[1:-1]  # the members, without the brackets
            yield separator + encoded
            made = len(encoded)
            start += len(members)
        separator = b","
        # Aim at a piece per call: fewer members after a large slice, more after small ones.
        if made > PIECE_CHARS:
            step = max(1, step // 4)
        elif made < PIECE_CHARS // 4:
            step = min(step * 2, MAX_SLICE)
    yield b"]"


def _key(key: Any) -> bytes:
    """A member name as `json` writes it (a non-string key is written as its JSON text)."""
    if isinstance(key, str):
        return dumps_bytes(key)
    return dumps_bytes({key: 0})[1:-3]
