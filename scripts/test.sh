#!/usr/bin/env bash
# Installs everything into .venv/ (idempotent), checks lint, formatting and types, and runs the
# whole test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
.venv/bin/ruff check erase_cli tests bench
.venv/bin/ruff format --check erase_cli tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
