# syntax=docker/dockerfile:1
# Distill Watchdog: the daemon (`distill-watchdog serve`) on CPU PyTorch and ONNX Runtime.
#
#   docker build -t distill-watchdog:0.1.0 .
#   docker run -p 8080:8080 -v wd-data:/data -e WATCHDOG__SERVER__ADMIN_TOKEN=... distill-watchdog:0.1.0
#
# The same image runs distillation jobs: `--entrypoint distill-watchdog ... distill --job J --out D`
# or `--entrypoint torchrun ... -m distill_engine --job J --out D` (see deploy/k8s/jobs/).
#
# Build arguments (docs/deploy.md):
#   PYTHON_IMAGE     the base of both stages: a Debian with Python 3.11 (`python3 -m venv` must work)
#   TORCH_INDEX_URL  where torch comes from: PyTorch's CPU-only wheel index by default
#   PIP_NO_INDEX, PIP_FIND_LINKS
#                    pip's own settings. A build without a network passes PIP_NO_INDEX=1,
#                    PIP_FIND_LINKS=/wheelhouse and a folder of wheels as the build context
#                    `wheelhouse` (`--build-context wheelhouse=DIR`); `make image` does.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- wheelhouse: empty, unless the build is given one as the build context `wheelhouse` --------
FROM scratch AS wheelhouse

# --- build: a virtual environment from the runtime lock, requirements/runtime.txt -------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/runtime.txt ./requirements/
# CPU PyTorch: torch's own pin, read from the runtime lock, taken from the CPU-only index
# (2.x.y+cpu satisfies ==2.x.y and pulls no CUDA wheels); then every pin of the same lock, which
# the Makefile's venv installs too. The build fails if a CUDA build of torch slipped in. The test
# suites of the largest dependencies and torch's C++ headers are dropped: nothing imports them.
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    pip install --no-deps --index-url "$TORCH_INDEX_URL" \
        "$(grep -E '^torch==' requirements/runtime.txt)" \
 && pip install -r requirements/runtime.txt \
 && python -c "import torch; assert torch.version.cuda is None, 'expected the CPU build of torch'" \
 && cd /opt/venv/lib/python3*/site-packages \
 && find pandas sympy scipy statsmodels numpy sklearn networkx pyarrow matplotlib \
        -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf torch/include \
 && python -c "import pandas, sympy, scipy.stats, statsmodels.api, sklearn.ensemble, networkx, pyarrow, matplotlib"
COPY pyproject.toml setup.py README.md ./
COPY watchdog ./watchdog
COPY distill_engine ./distill_engine
# Every module of both packages imports (-P: not from /src, whose watchdog/ folder would hide the
# file-system library of that name).
RUN pip install --no-deps --no-build-isolation . \
 && python -P -c "import importlib, pkgutil, distill_watchdog as w, distill_engine as e, watchdog.observers; \
[importlib.import_module(m.name) for p in (w, e) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.') \
 if not m.name.endswith('__main__')]"

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
COPY deploy/image/watchdog.yaml /etc/distill-watchdog/watchdog.yaml
# Kubernetes Job templates and their submit script, for `distill.launcher: command` (docs/deploy.md)
COPY deploy/k8s/jobs /opt/distill-watchdog/k8s-jobs
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Ready means a student is loaded: the container turns healthy once a model is registered.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('WATCHDOG__SERVER__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["distill-watchdog", "serve"]
