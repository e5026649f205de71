"""Settings come from the environment once, with local defaults and hidden secrets."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.settings import DEVELOPMENT_REDIS_SIGNING_KEY, Settings


def test_defaults_run_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "GATEWAY_ENV", "MINIO_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///./var/gateway.db"
    assert settings.mlflow_tracking_uri == "sqlite:///./var/mlflow.db"
    assert settings.minio_endpoint is None
    assert settings.production is False


def test_environment_names_from_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("MINIO_ALLOWED_BUCKETS", " charts, archive ,")
    monkeypatch.setenv("MINIO_SECURE", "true")
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_IMAGE_CACHE_MB", "8")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "s3cret-token-value")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.minio_allowed_buckets == ("charts", "archive")
    assert settings.minio_secure is True
    assert settings.production is True
    assert settings.image_cache_mb == 8
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret-token-value"
    assert "s3cret" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.env = "production"  # type: ignore[misc]


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RENDER_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="GATEWAY_RENDER_CONCURRENCY"):
        Settings()


def test_production_with_redis_refuses_to_start_without_a_signing_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("GATEWAY_REDIS_SIGNING_KEY", raising=False)
    with pytest.raises(ValueError, match="GATEWAY_REDIS_SIGNING_KEY"):
        Settings()
    monkeypatch.setenv("GATEWAY_REDIS_SIGNING_KEY", "x" * 31)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Settings()


def test_production_with_redis_and_a_long_signing_key_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("GATEWAY_REDIS_SIGNING_KEY", "k" * 32)
    settings = Settings()
    assert settings.redis_signing_secret == b"k" * 32
    assert "k" * 32 not in repr(settings)


def test_development_signs_shared_entries_with_the_development_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEWAY_ENV", raising=False)
    monkeypatch.delenv("GATEWAY_REDIS_SIGNING_KEY", raising=False)
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    assert Settings().redis_signing_secret == DEVELOPMENT_REDIS_SIGNING_KEY.encode()


def test_the_cli_names_a_refused_configuration_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_ENV", "production")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("GATEWAY_REDIS_SIGNING_KEY", raising=False)
    assert main(["export-schema"]) == 2
    captured = capsys.readouterr()
    assert "configuration refused" in captured.err
    assert "GATEWAY_REDIS_SIGNING_KEY" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
