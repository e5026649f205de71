"""Settings come from the environment once, with local defaults and hidden secrets."""

from __future__ import annotations

import pytest

from gateway.settings import Settings


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
