# syntax=docker/dockerfile:1
# One image for every OET process; the command chooses the role:
#   docker run IMAGE OETDeviceServer oet      the Tango device server (TANGO_HOST must be set)
#   docker run IMAGE oet-gateway              the REST gateway (port 5000)
#   docker run IMAGE oet procedure list       the command-line client
#   docker run IMAGE                          oet-stack: database, device server and gateway
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv holding the project and its dependencies --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-compile /src \
    && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +
# Docker HEALTHCHECK helper: checks whichever OET process is PID 1's command.
RUN printf '%s\n' \
    '#!/opt/venv/bin/python' \
    '"""Docker health check of the OET process this container runs."""' \
    'import os, socket, sys' \
    'with open("/proc/1/cmdline", "rb") as f:' \
    '    argv = f.read().decode().split("\0")' \
    'names = [os.path.basename(a) for a in argv]' \
    'if "oet-gateway" in names or "oet-stack" in names:' \
    '    port = int(os.environ.get("OET_REST_PORT", "5000"))' \
    '    socket.create_connection(("127.0.0.1", port), timeout=5).close()' \
    'elif "OETDeviceServer" in names and "-nodb" not in argv:' \
    '    import tango' \
    '    instance = argv[names.index("OETDeviceServer") + 1]' \
    '    tango.DeviceProxy("dserver/OETDeviceServer/" + instance).ping()' \
    'sys.exit(0)' \
    > /opt/venv/bin/oet-healthcheck \
    && chmod 0755 /opt/venv/bin/oet-healthcheck

# ---- runtime: slim, non-root --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="ska-oso-oet" \
      org.opencontainers.image.description="SKA Observation Execution Tool: OETDevice Tango device server, REST gateway and oet CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.vendor="SKA Observatory" \
      org.opencontainers.image.source="https://gitlab.com/ska-telescope/oso/ska-oso-oet" \
      int.skao.team="OSO" \
      int.skao.application="ska-oso-oet"

# git: git:// scripts are cloned at run time; tini: PID 1 that forwards SIGTERM and reaps
# orphaned script processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 tango \
    && useradd --uid 1000 --gid 1000 --home-dir /var/lib/oet --create-home \
       --shell /usr/sbin/nologin tango \
    && mkdir -p /scripts /var/lib/oet/cache /var/lib/oet/state \
    && chown -R 1000:1000 /var/lib/oet

COPY --from=build /opt/venv /opt/venv
COPY --chown=1000:1000 scripts/ /scripts/
COPY deviceservers/ /opt/oet/deviceservers/
COPY examples/ /opt/oet/examples/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/oet \
    XDG_CACHE_HOME=/var/lib/oet/cache \
    OET_SCRIPT_ROOTS=/scripts \
    OET_EXAMPLES_DIR=/opt/oet/examples \
    OET_REST_HOST=0.0.0.0 \
    OET_REST_PORT=5000

USER 1000:1000
WORKDIR /var/lib/oet
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["oet-healthcheck"]
ENTRYPOINT ["tini", "--"]
CMD ["oet-stack", "--data-dir", "/var/lib/oet/state/stack", "--config", "/opt/oet/deviceservers/oet.json"]
