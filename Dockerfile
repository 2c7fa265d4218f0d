# syntax=docker/dockerfile:1
# Multi-stage: the builder resolves the locked dependencies with uv; the runtime image carries only
# the virtual environment and runs as an unprivileged user.
FROM python:3.11-slim AS builder
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY agent ./agent
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --home-dir /nonexistent --shell /usr/sbin/nologin exporter \
 && mkdir -p /var/lib/sophos-central-exporter \
 && chown exporter:exporter /var/lib/sophos-central-exporter
COPY --from=builder /app /app
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/var/lib/sophos-central-exporter"]
EXPOSE 9866
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9866/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["sophos-central-exporter"]
CMD ["run", "--config", "/etc/sophos-central-exporter/config.yml"]
