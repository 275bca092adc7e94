# One image for every Win-Train process (five services, the gateway, the workspace seeder).
# CPU by default; the GPU variant swaps the torch wheel index:
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up --build

# ---- build: a virtual environment with every pinned dependency -------------------------
FROM python:3.11-slim AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock pyproject.toml ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements.lock
COPY protos/ protos/
COPY services/ services/
COPY gateway/ gateway/
COPY cli/ cli/
COPY tools/ tools/
COPY config.yaml README.md ./
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e .

# ---- runtime: non-root, no build tools ------------------------------------------------
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 wintrain \
 && mkdir -p /workspace && chown wintrain:wintrain /workspace
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=wintrain:wintrain /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    WINTRAIN__STORAGE__WORKSPACE=/workspace \
    WINTRAIN__MODEL__BASE_MODEL_PATH=/workspace/models/tiny-chat
USER wintrain
VOLUME ["/workspace"]
CMD ["python", "-m", "services.common.launcher"]
