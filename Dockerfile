# syntax=docker/dockerfile:1
# sophos-central-exporter on Debian 12 with Debian's own Python (3.11).
#
#   docker build -t sophos-central-exporter .          (or: podman build --format docker ...)
#
# Two stages: the builder installs the locked dependencies and the exporter into a virtual
# environment with uv; the runtime stage carries Debian's python3, the CA certificates and that
# virtual environment, nothing else (no compiler, no pip, no uv), and runs as an unprivileged user.
#
# Building behind a TLS-intercepting proxy: mount its CA bundle read-only into the build and name
# it, e.g. with podman
#   --volume /etc/ssl/certs/ca-certificates.crt:/run/build-ca/ca-certificates.crt:ro
#   --build-arg SSL_CERT_FILE=/run/build-ca/ca-certificates.crt
#   --build-arg PIP_CERT=/run/build-ca/ca-certificates.crt --build-arg UV_SYSTEM_CERTS=1
# The build arguments exist in the builder stage only; none of them reaches the image.

# Debian's python3 and the CA certificates, shared by both stages so that the virtual environment
# is built against exactly the interpreter it runs on.
FROM debian:bookworm-slim AS python
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

FROM python AS builder
ARG SSL_CERT_FILE
ARG PIP_CERT
ARG UV_SYSTEM_CERTS
# The version of uv that installs uv.lock in the build (any recent uv reads the lock the same way).
ARG UV_VERSION=0.13.9
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON=/usr/bin/python3 UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 UV_PROJECT_ENVIRONMENT=/opt/sophos-central-exporter
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes, not for every code change.
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
COPY agent ./agent
# The exporter itself as a wheel (not editable), so the runtime stage needs no source tree.
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable

FROM python
RUN groupadd --gid 10001 exporter \
 && useradd --uid 10001 --gid exporter --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exporter \
 && mkdir -p /var/lib/sophos-central-exporter /etc/sophos-central-exporter \
 && chown exporter:exporter /var/lib/sophos-central-exporter
COPY --from=builder /opt/sophos-central-exporter /opt/sophos-central-exporter
ENV PATH="/opt/sophos-central-exporter/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
VOLUME ["/var/lib/sophos-central-exporter"]
EXPOSE 9866
# Asks the agent's /healthz on the address in SOPHOS_EXPORTER_WEB_LISTEN_ADDRESS (default :9866):
# set the listen address with that variable, not --web.listen-address, and the check follows it.
# With --web.config.file (TLS, basic auth) give the check its own command (--health-cmd).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python3", "-m", "agent.healthcheck"]
ENTRYPOINT ["sophos-central-exporter"]
CMD ["run", "--config", "/etc/sophos-central-exporter/config.yml"]
