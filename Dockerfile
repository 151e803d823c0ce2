# syntax=docker/dockerfile:1
# Distill Watchdog: the daemon (`distill-watchdog serve`) on CPU PyTorch and ONNX Runtime.
#
#   docker build -t distill-watchdog:0.1.0 .
#   docker run -p 8080:8080 -v wd-data:/data -e WATCHDOG__SERVER__ADMIN_TOKEN=... distill-watchdog:0.1.0
#
# The same image runs distillation jobs: `--entrypoint distill-watchdog ... distill --job J --out D`
# or `--entrypoint torchrun ... -m distill_engine --job J --out D` (see deploy/k8s/jobs/).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment from the one pinned list, requirements.txt -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip "setuptools>=77"
COPY requirements.txt ./
# CPU PyTorch: torch's own pin, read from requirements.txt, taken from PyTorch's CPU-only index
# (2.x.y+cpu satisfies ==2.x.y, and pulls no CUDA wheels); then every pin of the same list, as
# the Makefile installs it. requirements.txt stays the single source of truth.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "$(grep -E '^torch==' requirements.txt)" \
 && pip install -r requirements.txt \
 && python -c "import torch; assert not torch.version.cuda, 'expected the CPU build of torch'"
COPY pyproject.toml setup.py README.md ./
COPY watchdog ./watchdog
COPY distill_engine ./distill_engine
RUN pip install --no-deps --no-build-isolation . \
 && python -c "import distill_watchdog, distill_engine, watchdog.observers"

# --- runtime: the venv, a non-root user, /data ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="distill-watchdog" \
      org.opencontainers.image.description="Serves a distilled student, shadows traffic to its teacher, watches drift and calibration, redistills when it slips." \
      org.opencontainers.image.licenses="Apache-2.0"
# data_dir, host and port are fixed in the image (the environment overrides the config file):
# the volume is /data, the port 8080. Mount a config at $WATCHDOG_CONFIG or pass --config.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DO_NOT_TRACK=1 \
    HOME=/data \
    WATCHDOG_CONFIG=/etc/distill-watchdog/watchdog.yaml \
    WATCHDOG__DATA_DIR=/data \
    WATCHDOG__SERVER__HOST=0.0.0.0 \
    WATCHDOG__SERVER__PORT=8080
RUN groupadd --system --gid 10001 watchdog \
 && useradd --system --uid 10001 --gid watchdog --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin watchdog \
 && mkdir -p /data /etc/distill-watchdog \
 && chown watchdog:watchdog /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/image/watchdog.yaml /etc/distill-watchdog/watchdog.yaml
# Kubernetes Job templates and their submit script, for `distill.launcher: command` (docs/deploy.md)
COPY deploy/k8s/jobs /opt/distill-watchdog/k8s-jobs
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Ready means a student is loaded: the container turns healthy once a model is registered.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('WATCHDOG__SERVER__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["distill-watchdog", "serve"]
