#!/usr/bin/env bash
# Installs everything into .venv/ (idempotent) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
exec .venv/bin/python -m pytest -q "$@"
