"""parse_minio_url: every accepted form and nothing else (examples and properties)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.minio_urls import ObjectLocation, UrlRefusal, parse_minio_url
from gateway.settings import Settings

SETTINGS = Settings(
    minio_endpoint="minio.internal:9000", minio_allowed_buckets=("charts", "qa-charts")
)


@pytest.mark.parametrize(
    "url",
    [
        "s3://charts/AAPL/wf/c.png",
        "minio://charts/AAPL/wf/c.png",
        "charts/AAPL/wf/c.png",
        "http://minio.internal:9000/charts/AAPL/wf/c.png",
        "https://minio.internal:9000/charts/AAPL/wf/c.png?X-Amz-Expires=60&X-Amz-Signature=ff",
        "S3://charts/AAPL/wf/c.png",
        "s3://charts/AAPL/wf/c%2Epng".replace("%2E", "."),
    ],
)
def test_accepted_forms(url: str) -> None:
    assert parse_minio_url(url, SETTINGS) == ObjectLocation("charts", "AAPL/wf/c.png")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, "missing or not a string"),
        (42, "missing or not a string"),
        ("", "missing or not a string"),
        ("http://evil.example/charts/c.png", "host other than the configured"),
        ("http://minio.internal:9001/charts/c.png", "host other than the configured"),
        ("http://minio.internal:9000@evil.example/charts/c.png", "user info"),
        ("s3://me@charts/c.png", "user info or a port"),
        ("s3://charts/../secret.png", "path traversal"),
        ("s3://charts/a/%2e%2e/secret.png", "path traversal"),
        ("s3://charts/a/%252e%252e/secret.png", "encoded more than once"),
        ("s3://charts/a\\b.png", "backslashes"),
        ("s3://charts/a\x00b.png", "control characters"),
        ("s3://other/c.png", "not in MINIO_ALLOWED_BUCKETS"),
        ("s3://Charts_/c.png", "no valid bucket"),
        ("s3://charts/", "no valid object key"),
        ("ftp://charts/c.png", "scheme 'ftp'"),
        ("//minio.internal:9000/charts/c.png", "scheme ''"),
    ],
)
def test_refused_forms_say_why(url: object, reason: str) -> None:
    result = parse_minio_url(url, SETTINGS)
    assert isinstance(result, UrlRefusal)
    assert reason in result.reason


def test_http_form_needs_a_configured_endpoint() -> None:
    result = parse_minio_url("http://minio.internal:9000/charts/c.png", Settings())
    assert isinstance(result, UrlRefusal)


segment = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_.() "),
    min_size=1,
    max_size=12,
)
keys = st.lists(segment.filter(lambda s: s not in (".", "..")), min_size=1, max_size=5).map(
    "/".join
)


@given(
    bucket=st.sampled_from(["charts", "qa-charts"]),
    key=keys,
    form=st.sampled_from(["s3", "minio", "http", "bare"]),
)
@hsettings(max_examples=300)
def test_any_safe_key_in_any_accepted_form_parses_back(bucket: str, key: str, form: str) -> None:
    path = f"{bucket}/{quote(key)}"
    url = {
        "s3": f"s3://{path}",
        "minio": f"minio://{path}",
        "http": f"http://minio.internal:9000/{path}",
        "bare": path,
    }[form]
    assert parse_minio_url(url, SETTINGS) == ObjectLocation(bucket, key)


@given(url=st.text(max_size=200))
@hsettings(max_examples=500)
def test_arbitrary_text_never_raises_and_never_escapes(url: str) -> None:
    result = parse_minio_url(url, SETTINGS)
    if isinstance(result, ObjectLocation):
        assert result.bucket in SETTINGS.minio_allowed_buckets
        assert ".." not in result.key.split("/")
        assert "\\" not in result.key
        assert "\x00" not in result.key


@given(
    host=st.sampled_from(
        ["127.0.0.1", "localhost", "169.254.169.254", "evil.example", "minio.internal", "[::1]"]
    ),
    port=st.integers(1, 65535),
    key=keys,
)
def test_no_other_host_or_port_is_ever_accepted(host: str, port: int, key: str) -> None:
    url = f"http://{host}:{port}/charts/{quote(key)}"
    result = parse_minio_url(url, SETTINGS)
    if f"{host}:{port}" == "minio.internal:9000":
        assert isinstance(result, ObjectLocation)
    else:
        assert isinstance(result, UrlRefusal)
