#!/usr/bin/env bash
# GPU benchmark: SDXL's real UNet configuration, randomly initialised, at 1024² in bf16, on one GPU
# with no network. Measures generation pairs/s (mapo-data's render path), and MaPO / Diffusion-DPO
# training step time, peak memory and MFU, on the fly and on cached latents, with gradient
# checkpointing and 8-bit AdamW where bitsandbytes is present. Results: $OUT/gpu.json (or ./gpu-out).
#
# Prep, once, on a machine with network (wheels for what a bare torch image lacks; see BENCHMARKS.md):
#   bash bench/gpu.sh --prep          # pip download --no-deps ... into ./wheels (gitignored)
# Run (under 8 minutes on one H100):
#   bash bench/gpu.sh                 # installs ./wheels offline if diffusers is missing, then measures
#   bash bench/gpu.sh --smoke         # the same path on the CPU with the tiny model (a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--prep" ]]; then
  mkdir -p wheels
  # Versions pinned to what mapo is developed against; --no-deps: each needed one is named.
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d wheels \
    diffusers==0.42.1 datasets==5.2.0 peft==0.21.2 multiprocess dill importlib_metadata
  du -sh wheels
  exit 0
fi

SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"

# Offline install of what the image lacks (torch, transformers, accelerate, pyarrow, ... are there).
if ! $PY -c "import diffusers, datasets" 2>/dev/null; then
  [[ -d wheels ]] || { echo "no ./wheels: run 'bash bench/gpu.sh --prep' where there is network"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [[ $SMOKE == 1 ]]; then
  $PY bench/gpu_bench.py --smoke --out "$OUT/gpu.json"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
  timeout 460 $PY bench/gpu_bench.py --out "$OUT/gpu.json"
fi
