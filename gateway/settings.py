"""Service settings: read once from the environment into one frozen object."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Production refuses shorter admin tokens: they can be guessed.
MIN_ADMIN_TOKEN = 24
# Production refuses a shorter Redis signing key (bytes of UTF-8): HMAC keys this short can be
# searched for.
MIN_REDIS_SIGNING_KEY = 32
# Signs shared entries when no GATEWAY_REDIS_SIGNING_KEY is set (development only): entries stay
# bound to their own key, so a value copied under another key is still refused, but anyone who
# reads this file can forge one. Production refuses to start without a key of its own.
DEVELOPMENT_REDIS_SIGNING_KEY = "artifact-lineage-gateway development signing key"


class Settings(BaseSettings):
    """Everything the gateway reads from its environment, with defaults that run locally."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    env: Literal["development", "production"] = Field(
        default="development", validation_alias="GATEWAY_ENV"
    )
    database_url: str = Field(default="sqlite:///./var/gateway.db", validation_alias="DATABASE_URL")
    mlflow_tracking_uri: str = Field(
        default="sqlite:///./var/mlflow.db", validation_alias="MLFLOW_TRACKING_URI"
    )
    mlflow_ui_url: str | None = Field(default=None, validation_alias="MLFLOW_UI_URL")

    minio_endpoint: str | None = Field(default=None, validation_alias="MINIO_ENDPOINT")
    minio_access_key: str | None = Field(default=None, validation_alias="MINIO_ACCESS_KEY")
    minio_secret_key: SecretStr | None = Field(default=None, validation_alias="MINIO_SECRET_KEY")
    minio_secure: bool = Field(default=False, validation_alias="MINIO_SECURE")
    minio_region: str = Field(default="us-east-1", validation_alias="MINIO_REGION")
    minio_allowed_buckets: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("charts",), validation_alias="MINIO_ALLOWED_BUCKETS"
    )

    admin_token: SecretStr | None = Field(default=None, validation_alias="GATEWAY_ADMIN_TOKEN")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="GATEWAY_CORS_ORIGINS"
    )
    log_format: Literal["json", "console"] = Field(
        default="json", validation_alias="GATEWAY_LOG_FORMAT"
    )
    log_level: str = Field(default="info", validation_alias="GATEWAY_LOG_LEVEL")

    # GraphQL work a request may ask for (prices in gateway/gql/cost.py and the README).
    max_query_cost: int = Field(default=1000, ge=1, validation_alias="GATEWAY_MAX_QUERY_COST")
    # How long the answer of a read (a GraphQL query, GET /api/artifacts/{id}) is served again
    # to identical reads (gateway/answers.py); 0 turns it off.
    answer_cache_s: float = Field(
        default=2.0, ge=0, le=60, validation_alias="GATEWAY_ANSWER_CACHE_S"
    )
    # Wall-clock bound of one request's work (it also stops when the client disconnects).
    request_timeout_s: float = Field(
        default=30.0, gt=0, validation_alias="GATEWAY_REQUEST_TIMEOUT_S"
    )
    max_connections: int = Field(default=1000, ge=1, validation_alias="GATEWAY_MAX_CONNECTIONS")
    max_response_mb: int = Field(default=16, ge=1, validation_alias="GATEWAY_MAX_RESPONSE_MB")
    image_cache_mb: int = Field(default=64, ge=0, validation_alias="GATEWAY_IMAGE_CACHE_MB")
    render_concurrency: int = Field(default=2, ge=1, validation_alias="GATEWAY_RENDER_CONCURRENCY")
    render_timeout_s: float = Field(default=10.0, gt=0, validation_alias="GATEWAY_RENDER_TIMEOUT_S")
    # Renders waiting or running per worker; each still answers within render_timeout_s.
    render_queue: int = Field(default=32, ge=1, le=10_000, validation_alias="GATEWAY_RENDER_QUEUE")
    # A render that failed or timed out is remembered this long: not retried by every request.
    render_failure_ttl_s: float = Field(
        default=30.0, ge=0, validation_alias="GATEWAY_RENDER_FAILURE_TTL_S"
    )
    max_bars: int = Field(default=2000, ge=10, validation_alias="GATEWAY_MAX_BARS")
    max_snapshot_bars: int = Field(
        default=100_000, ge=10, validation_alias="GATEWAY_MAX_SNAPSHOT_BARS"
    )
    mlflow_timeout_s: float = Field(default=2.0, gt=0, validation_alias="GATEWAY_MLFLOW_TIMEOUT_S")
    # Budget of the first open of a local MLflow store (seconds on a fresh process); lookups
    # wait for it instead of reporting the gateway's own start-up as an MLflow outage.
    mlflow_warmup_s: float = Field(default=60.0, ge=0, validation_alias="GATEWAY_MLFLOW_WARMUP_S")
    mlflow_concurrency: int = Field(default=8, ge=1, validation_alias="GATEWAY_MLFLOW_CONCURRENCY")
    lineage_cache_ttl_s: float = Field(
        default=300.0, ge=0, validation_alias="GATEWAY_LINEAGE_CACHE_TTL_S"
    )
    lineage_miss_ttl_s: float = Field(
        default=30.0, ge=0, validation_alias="GATEWAY_LINEAGE_MISS_TTL_S"
    )
    # The per-workflow missing-lineage gauge: how often it is counted, and how many workflows
    # (the largest) get a label of their own; the rest are summed as `other`.
    lineage_gauge_interval_s: float = Field(
        default=60.0, gt=0, le=86_400, validation_alias="GATEWAY_LINEAGE_GAUGE_INTERVAL_S"
    )
    lineage_gauge_workflows: int = Field(
        default=20, ge=0, le=500, validation_alias="GATEWAY_LINEAGE_GAUGE_WORKFLOWS"
    )
    mlflow_breaker_threshold: int = Field(
        default=5, ge=1, validation_alias="GATEWAY_MLFLOW_BREAKER_THRESHOLD"
    )
    mlflow_breaker_cooldown_s: float = Field(
        default=15.0, ge=0, validation_alias="GATEWAY_MLFLOW_BREAKER_COOLDOWN_S"
    )
    minio_timeout_s: float = Field(default=3.0, gt=0, validation_alias="GATEWAY_MINIO_TIMEOUT_S")
    minio_max_object_mb: int = Field(
        default=16, ge=1, validation_alias="GATEWAY_MINIO_MAX_OBJECT_MB"
    )

    # The shared tier across replicas (gateway/sharedstore.py). Unset: in-process only.
    redis_url: SecretStr | None = Field(default=None, validation_alias="GATEWAY_REDIS_URL")
    redis_prefix: str = Field(
        default="gateway:",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        validation_alias="GATEWAY_REDIS_PREFIX",
    )
    # Budget of one Redis operation: past it the request goes on without the shared tier.
    redis_timeout_s: float = Field(
        default=0.25, gt=0, le=10, validation_alias="GATEWAY_REDIS_TIMEOUT_S"
    )
    redis_chart_ttl_s: int = Field(
        default=86_400, ge=1, validation_alias="GATEWAY_REDIS_CHART_TTL_S"
    )
    redis_max_chart_mb: int = Field(
        default=4, ge=1, le=512, validation_alias="GATEWAY_REDIS_MAX_CHART_MB"
    )
    # The fleet's secret for the HMAC that binds every shared entry to its key (required in
    # production when GATEWAY_REDIS_URL is set; every replica of a fleet has the same one).
    redis_signing_key: SecretStr | None = Field(
        default=None, validation_alias="GATEWAY_REDIS_SIGNING_KEY"
    )

    # Incoming W3C `baggage` is ignored unless this says the callers are trusted (tracecontext
    # only): it is the client's text. Trusted, it is read into the process; never sent on.
    trace_trust_baggage: bool = Field(default=False, validation_alias="GATEWAY_TRACE_TRUST_BAGGAGE")
    # Largest request header block the server reads (all header lines together, in bytes);
    # a bigger one is answered 431 before the app sees it.
    max_request_header_bytes: int = Field(
        default=16_384, ge=1024, le=1_048_576, validation_alias="GATEWAY_MAX_REQUEST_HEADER_BYTES"
    )
    # Longest log line the gateway writes (bytes of the rendered line); longer field values are cut
    # and the line says so (`truncated`).
    log_max_line_bytes: int = Field(
        default=8_192, ge=512, le=1_048_576, validation_alias="GATEWAY_LOG_MAX_LINE_BYTES"
    )

    @field_validator("minio_allowed_buckets", "cors_origins", mode="before")
    @classmethod
    def _split_buckets(cls, value: object) -> object:
        # Operators write a comma-separated list in the environment.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _production_guardrails(self) -> Settings:
        # Fail closed: a production fleet sharing Redis must sign what it shares.
        if self.production and self.redis_url is not None:
            key = self.redis_signing_key.get_secret_value() if self.redis_signing_key else ""
            if len(key.encode("utf-8")) < MIN_REDIS_SIGNING_KEY:
                raise ValueError(
                    "GATEWAY_REDIS_SIGNING_KEY of at least "
                    f"{MIN_REDIS_SIGNING_KEY} bytes is required in production when "
                    "GATEWAY_REDIS_URL is set"
                )
        return self

    @property
    def redis_signing_secret(self) -> bytes:
        """The HMAC key of shared entries: GATEWAY_REDIS_SIGNING_KEY, else the development key."""
        if self.redis_signing_key is not None and self.redis_signing_key.get_secret_value():
            return self.redis_signing_key.get_secret_value().encode("utf-8")
        return DEVELOPMENT_REDIS_SIGNING_KEY.encode("utf-8")

    @property
    def production(self) -> bool:
        """True when running with production guardrails (masked errors, no introspection)."""
        return self.env == "production"

    @property
    def minio_max_object_bytes(self) -> int:
        """Largest object the gateway reads from MinIO."""
        return self.minio_max_object_mb * 1024 * 1024

    @property
    def minio_read_deadline_s(self) -> float:
        """Budget of one whole object read (stat + get + body), however slowly bytes arrive."""
        return self.minio_timeout_s * 2

    @property
    def mlflow_ui_base(self) -> str | None:
        """Base of MLflow UI links: MLFLOW_UI_URL, else an HTTP tracking URI, else none."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url
        if self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return self.mlflow_tracking_uri
        return None

    def admin_token_problem(self) -> str | None:
        """Why repair must be refused with this configuration, or None when it may run."""
        if self.admin_token is None or not self.admin_token.get_secret_value():
            return "repair is disabled: GATEWAY_ADMIN_TOKEN is not configured"
        if self.production and len(self.admin_token.get_secret_value()) < MIN_ADMIN_TOKEN:
            return (
                f"repair is disabled: GATEWAY_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN} "
                "characters"
            )
        return None
