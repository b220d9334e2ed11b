# One image for the API and both kinds of worker. TORCH_INDEX_URL picks the torch build:
# CPU wheels by default; the gpu-worker service builds with a CUDA index instead.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY workers workers
COPY shared shared
COPY cli cli
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" .

RUN useradd --create-home --uid 10001 movierec
USER movierec
EXPOSE 8000
CMD ["movierec", "api", "--host", "0.0.0.0", "--port", "8000"]
