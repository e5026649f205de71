"""Stored MinIO URLs parsed into (bucket, key), strictly: a stored URL is never fetched as is.

It is parsed into a location in an allowed bucket, read later with the service's own client and
credentials from the configured endpoint only (no SSRF).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.settings import Settings

# Matched against the whole string (`fullmatch`), never `^...$` with `match`.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MAX_URL = 2048
_MAX_KEY = 1024


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    """Where a chart lives in the object store."""

    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class UrlRefusal:
    """Why a stored URL will not be fetched."""

    reason: str


def parse_minio_url(url: Any, settings: Settings) -> ObjectLocation | UrlRefusal:
    """(bucket, key) from `s3://b/k`, `minio://b/k`, `http(s)://<endpoint>/b/k` or `b/k`.

    Anything else is refused with a reason: another host or port, user info, traversal
    (`..`, backslash, encoded dots or slashes, NUL), odd bucket names, or a bucket outside
    MINIO_ALLOWED_BUCKETS. Query strings (presigned URLs) are ignored.
    """
    if not isinstance(url, str) or not url.strip():
        return UrlRefusal("minio_url is missing or not a string")
    if len(url) > _MAX_URL:
        return UrlRefusal("minio_url is too long")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        return UrlRefusal("minio_url contains control characters or backslashes")
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return UrlRefusal("minio_url is malformed")
    scheme = parts.scheme.lower()
    if scheme in ("s3", "minio"):
        if "@" in parts.netloc or ":" in parts.netloc:
            return UrlRefusal("minio_url has user info or a port where the bucket belongs")
        bucket, raw_key = parts.netloc, parts.path.removeprefix("/")
    elif scheme in ("http", "https"):
        if "@" in parts.netloc:
            return UrlRefusal("minio_url has user info")
        endpoint = (settings.minio_endpoint or "").lower()
        if not endpoint or parts.netloc.lower() != endpoint:
            return UrlRefusal("minio_url names a host other than the configured MinIO endpoint")
        bucket, _, raw_key = parts.path.removeprefix("/").partition("/")
    elif scheme == "" and not parts.netloc:
        bucket, _, raw_key = parts.path.partition("/")
    else:
        return UrlRefusal(f"minio_url scheme {scheme!r} is not accepted")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        return UrlRefusal("minio_url has no valid bucket")
    if bucket not in settings.minio_allowed_buckets:
        return UrlRefusal(f"bucket {bucket!r} is not in MINIO_ALLOWED_BUCKETS")
    key = unquote(raw_key)
    if "%" in key:  # double encoding: one decode is all a key ever needs
        return UrlRefusal("minio_url key is encoded more than once")
    if not key or len(key) > _MAX_KEY or key.startswith("/"):
        return UrlRefusal("minio_url has no valid object key")
    if "\\" in key or "\x00" in key or any(seg in ("..", ".") for seg in key.split("/")):
        return UrlRefusal("minio_url key attempts path traversal")
    return ObjectLocation(bucket=bucket, key=key)
