#!/usr/bin/env bash
# Installs everything into .venv/ (idempotent) and runs the main job on the bundled defaults:
# sample data -> ingest -> fit -> forget -> verify -> ask, in a demo store recreated on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export ERASE_STORE=demo-store
erase=.venv/bin/erase
rm -rf demo-store
step() { printf '\n\033[1m$ erase %s\033[0m\n' "$*" >&2; "$erase" "$@"; }

step ingest sample_data/support_intents.jsonl
step fit
step status
# Forget the first demonstration of the prompt: a selected example, so the prompt must change.
victim=$("$erase" status --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["fit"]["examples"][0]["id"])')
step forget "$victim"
step verify
# Without --choices the model generates an answer; with them it scores each option.
step prompt "I was charged twice for my order this month, can you fix it?"
step ask "I was charged twice for my order this month, can you fix it?"
step ask "I was charged twice for my order this month, can you fix it?" \
    --choices "question about a charge" --choices "track a package" --choices "reset a password"
step ask --from-file sample_data/questions.jsonl
step log --verify
