"""Opaque Relay cursors for pagination walked by artifact id."""

from __future__ import annotations

import base64
import binascii

from gateway.errors import InvalidInputError
from gateway.services import MAX_ID

_PREFIX = "artifact:"


def encode_cursor(artifact_id: int) -> str:
    """The opaque cursor that points just after this artifact id."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{artifact_id}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    """The artifact id inside a cursor; InvalidInputError for anything this code did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidInputError("invalid cursor") from exc
    digits = raw.removeprefix(_PREFIX)
    if raw == digits or not digits.isdigit() or not digits.isascii() or len(digits) > 19:
        raise InvalidInputError("invalid cursor")
    value = int(digits)
    if value > MAX_ID or encode_cursor(value) != cursor:
        raise InvalidInputError("invalid cursor")
    return value
