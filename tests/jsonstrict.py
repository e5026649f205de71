"""What a browser's JSON.parse accepts: the check every answer of the gateway must pass."""

from __future__ import annotations

import json
from typing import Any

from gateway.strictjson import sanitize


def strict_parse(data: bytes) -> Any:
    """Decode as RFC 8259 JSON: UTF-8, no NaN/Infinity tokens, no lone surrogates."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    value = json.loads(data.decode("utf-8"), parse_constant=refuse)
    assert sanitize(value) == value, "holds a lone surrogate"
    return value
