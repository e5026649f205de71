"""docker-compose.yml, checked without Docker: services, health checks, ports and wiring.

No Docker engine runs on the project's machines, so this reads the YAML, interpolates it the
way compose does (`${VAR:-default}`, `$$`), and checks that the gateway's environment is
complete, parses into Settings, and points at the services defined next to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.demo import DEMO_BUCKET
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string: ${X}, ${X:-default}, ${X:?error}, $$."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name} is required: {arg}")
        return arg if op == "-" else ""

    return _VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


# What the operator must export before `docker compose up` (the file has no default for it).
OPERATOR_ENV = {"GATEWAY_REDIS_SIGNING_KEY": "o" * 64}


def gateway_env(compose: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    raw = compose["services"]["gateway"]["environment"]
    assert isinstance(raw, dict), "gateway.environment is a mapping"
    given = {**OPERATOR_ENV, **(env or {})}
    return {key: interpolate(str(value), given) for key, value in raw.items()}


def settings_variables() -> set[str]:
    aliases = {field.validation_alias for field in Settings.model_fields.values()}
    assert None not in aliases, "every setting has its environment name"
    return {str(alias) for alias in aliases}


def test_the_stack_has_every_service_with_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "redis",
        "gateway",
        "edge",
    }
    for name in ("postgres", "minio", "mlflow", "redis", "gateway", "edge"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["retries"] >= 3, name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["gateway"]["build"] == "."
    assert (ROOT / "Dockerfile").exists()
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {
        name: sorted(service.get("ports", [])) for name, service in compose["services"].items()
    }
    assert published == {
        "postgres": ["127.0.0.1:5432:5432"],
        "minio": ["127.0.0.1:9000:9000", "127.0.0.1:9001:9001"],
        "minio-init": [],
        "mlflow": ["127.0.0.1:5000:5000"],
        "redis": [],  # the replicas' own: not published
        "gateway": [],  # reached through the edge only
        "edge": ["127.0.0.1:8000:8080"],
    }
    assert compose["services"]["gateway"]["expose"] == ["8000"]
    assert compose["services"]["gateway"]["command"][-4:] == ["--port", "8000", "--workers", "2"]


def test_every_variable_the_gateway_reads_is_wired(compose: dict[str, Any]) -> None:
    env = gateway_env(compose)
    missing = settings_variables() - set(env)
    assert not missing, f"not wired in docker-compose.yml: {sorted(missing)}"
    unknown = {k for k in env if k.startswith("GATEWAY_")} - settings_variables()
    assert not unknown, f"wired but never read: {sorted(unknown)}"


def test_the_wiring_parses_and_points_at_the_services(compose: dict[str, Any]) -> None:
    env = gateway_env(compose)
    settings = Settings.model_validate({k: v for k, v in env.items() if v != ""})
    assert settings.production
    services = compose["services"]

    database = urlsplit(settings.database_url)
    postgres = services["postgres"]["environment"]
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == interpolate(postgres["POSTGRES_PASSWORD"], {})
    assert database.path == f"/{postgres['POSTGRES_DB']}"

    tracking = urlsplit(settings.mlflow_tracking_uri)
    mlflow_command = " ".join(services["mlflow"]["command"])
    assert (tracking.hostname, tracking.port) == ("mlflow", 5000)
    assert "--port=5000" in mlflow_command
    assert "mlflow:5000" in mlflow_command  # MLflow 3 checks the Host header

    assert settings.minio_endpoint == "minio:9000"
    minio_env = services["minio"]["environment"]
    assert settings.minio_access_key == interpolate(minio_env["MINIO_ROOT_USER"], {})
    assert settings.minio_secret_key is not None
    assert settings.minio_secret_key.get_secret_value() == interpolate(
        minio_env["MINIO_ROOT_PASSWORD"], {}
    )
    init = " ".join(services["minio-init"]["command"])
    created = set(re.findall(r"mc mb --ignore-existing local/([a-z0-9.-]+)", init))
    assert set(settings.minio_allowed_buckets) <= created
    assert DEMO_BUCKET in created

    depends = services["gateway"]["depends_on"]
    assert depends == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
        "mlflow": {"condition": "service_healthy"},
        "redis": {"condition": "service_started"},  # optional: a replica serves without it
    }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}


def test_several_replicas_share_a_bounded_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert int(interpolate(str(services["gateway"]["deploy"]["replicas"]), {})) >= 2
    settings = Settings.model_validate({k: v for k, v in gateway_env(compose).items() if v != ""})
    assert settings.redis_url is not None
    redis_url = urlsplit(settings.redis_url.get_secret_value())
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
    command = [interpolate(str(part), {}) for part in services["redis"]["command"]]
    assert command[command.index("--maxmemory") + 1] == "256mb"
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_redis_asks_for_the_password_the_gateway_connects_with(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = [interpolate(str(part), {}) for part in redis["command"]]
    password = command[command.index("--requirepass") + 1]
    assert password
    settings = Settings.model_validate({k: v for k, v in gateway_env(compose).items() if v != ""})
    assert settings.redis_url is not None
    assert urlsplit(settings.redis_url.get_secret_value()).password == password
    # The health check authenticates too (a NOAUTH answer is not a PONG).
    assert interpolate(redis["environment"]["REDISCLI_AUTH"], {}) == password
    assert "grep -q PONG" in redis["healthcheck"]["test"][1]
    chosen = gateway_env(compose, {"REDIS_PASSWORD": "chosen-by-the-operator"})
    chosen_url = Settings.model_validate({k: v for k, v in chosen.items() if v != ""}).redis_url
    assert chosen_url is not None
    assert urlsplit(chosen_url.get_secret_value()).password == "chosen-by-the-operator"


def test_the_fleet_signs_what_it_shares_in_redis(compose: dict[str, Any]) -> None:
    settings = Settings.model_validate({k: v for k, v in gateway_env(compose).items() if v != ""})
    assert settings.production
    assert len(settings.redis_signing_secret) >= 32
    chosen = gateway_env(compose, {"GATEWAY_REDIS_SIGNING_KEY": "k" * 40})
    assert Settings.model_validate(chosen).redis_signing_secret == b"k" * 40


def test_the_stack_refuses_to_start_without_a_signing_key(compose: dict[str, Any]) -> None:
    raw = str(compose["services"]["gateway"]["environment"]["GATEWAY_REDIS_SIGNING_KEY"])
    with pytest.raises(KeyError, match="GATEWAY_REDIS_SIGNING_KEY"):
        interpolate(raw, {})


def test_the_admin_token_fails_closed_unless_the_operator_sets_a_long_one(
    compose: dict[str, Any],
) -> None:
    unset = Settings.model_validate({k: v for k, v in gateway_env(compose).items() if v != ""})
    assert unset.admin_token_problem() is not None
    short = gateway_env(compose, {"GATEWAY_ADMIN_TOKEN": "short"})
    assert Settings.model_validate(short).admin_token_problem() is not None
    long = gateway_env(compose, {"GATEWAY_ADMIN_TOKEN": "x" * 32})
    assert Settings.model_validate(long).admin_token_problem() is None


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("${A:-x}", {}) == "x"
    assert interpolate("${A:-x}", {"A": "y"}) == "y"
    assert interpolate("${A}", {}) == ""
    assert interpolate("$$HOME", {}) == "$HOME"
    with pytest.raises(KeyError):
        interpolate("${A:?needed}", {})


def test_the_edge_proxies_to_the_gateway_with_its_config(compose: dict[str, Any]) -> None:
    edge = compose["services"]["edge"]
    assert edge["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert edge["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server gateway:8000" in config
    assert "listen 8080;" in config
