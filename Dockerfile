# onnxgate: slim Python base, non-root user, demo repository built at image build time.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 onnxgate

WORKDIR /opt/onnxgate
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY runtime ./runtime
COPY benchmarks ./benchmarks
RUN pip install .

# Build the demo repository into the image (deterministic, no download) and let the user own the state.
RUN onnxgate demo /srv/onnxgate \
 && mkdir -p /srv/onnxgate/state \
 && chown -R onnxgate:onnxgate /srv/onnxgate

USER onnxgate
WORKDIR /srv/onnxgate
EXPOSE 8000 8001 8002 8003

# Inside a container the inference and metrics listeners must bind beyond loopback. The control API stays on
# the container's loopback: to reach it from outside, mount a tokens file and set
#   ONNXGATE_TOKENS_FILE=/run/secrets/onnxgate-tokens.toml ONNXGATE_CONTROL_HOST=0.0.0.0
# (a non-loopback control listener without tokens refuses to start; see README: Security).
ENV ONNXGATE_HOST=0.0.0.0 \
    ONNXGATE_CONTROL_HOST=127.0.0.1 \
    ONNXGATE_CONFIG=/srv/onnxgate/gateway.toml \
    ONNXGATE_STATE_DIR=/srv/onnxgate/state

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1

ENTRYPOINT ["onnxgate"]
CMD ["serve"]
