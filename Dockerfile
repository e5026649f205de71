# Production image of the Artifact Lineage Gateway: `gateway serve` behind a health check.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/app/.cache/matplotlib \
    GATEWAY_ENV=production \
    GATEWAY_LOG_FORMAT=json \
    MALLOC_ARENA_MAX=2

RUN pip install --no-cache-dir uv \
 && useradd --create-home --uid 10001 gateway

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY gateway ./gateway
COPY chartkit ./chartkit
COPY dags_utils ./dags_utils
COPY schema.graphql ./
RUN uv sync --frozen --no-dev \
 && mkdir -p /app/.cache/matplotlib /app/var \
 && /app/.venv/bin/python -c "import matplotlib.font_manager as fm; fm.fontManager" \
 && chown -R gateway:gateway /app/.cache /app/var

ENV PATH="/app/.venv/bin:$PATH"
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["gateway", "serve", "--host", "0.0.0.0"]
