#!/usr/bin/env bash
# One command for a lent GPU (one H200, meant to stay under ~8 minutes): T-GRPO steps of the narrow
# and of the full-width (8-layer) 7B-structured random model at the paper's settings, each with the
# eager and the compiled decode step side by side (decode.py), the full one also with LoRA r = 64,
# then the whole 28-layer model with LoRA r = 64 (plan.py: fits one 80 GB GPU), one step; per phase
# time, tokens/s and peak memory next to plan.py, and the decode step's ms per token against the
# bandwidth roofline, eager and compiled (TORCH_LOGS shows recompiles and perf hints); then
# Qwen3-VL-8B's structure, narrow and at full width with 8 of its 36 layers and LoRA r = 64 (never
# run yet: may push the whole past 8 minutes).
#
#     bash bench/gpu_check.sh              # on the GPU machine; prints three tables
#     bash bench/gpu_check.sh --tokenizer DIR   # the real Qwen2.5-VL tokenizer from DIR
#                                               # (default ../shared/...)
#     bash bench/gpu_check.sh --dry-run    # on CPU: the narrow model, small settings (CI runs this)
#     bash bench/gpu_check.sh --family qwen3.5   # Qwen3.5-9B's hybrid structure only: narrow and
#                                                # 8 layers at full width, eager and compiled
#                                                # (--dry-run --family qwen3.5 on CPU)
#
# The figures go to bench/README.md ("GPU check"). The random models are built under runs/cache on
# first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--dry-run" ]]; then
    python bench/gpu_check.py --dry-run --steps 1 "${@:2}"
    exit 0
fi
python -c "import torch, sys
sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
export TORCH_LOGS="${TORCH_LOGS:-recompiles,perf_hints}"   # recompiles, skipped CUDA graphs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# the hybrid family alone (never run on a GPU yet)
if [[ "${1:-}" == "--family" && "${2:-}" == "qwen3.5" ]]; then
    for mode in off on; do
        python bench/gpu_check.py --family qwen3.5 --width narrow --steps 2 \
            --compile-decode $mode "${@:3}"
        python bench/gpu_check.py --family qwen3.5 --width full --steps 2 \
            --compile-decode $mode "${@:3}"
    done
    exit 0
fi
for mode in off on; do
    python bench/gpu_check.py --width narrow --steps 2 --compile-decode $mode "$@"
    python bench/gpu_check.py --width full --steps 2 --compile-decode $mode "$@"
done
# LoRA: bf16 base, no reference copy; then the 28-layer model
python bench/gpu_check.py --width full --steps 2 --lora-rank 64 --compile-decode on "$@"
python bench/gpu_check.py --width full28 --steps 1 --lora-rank 64 --compile-decode on "$@"
# Qwen3-VL-8B's structure: narrow, then 8 of its 36 layers at full width with LoRA
python bench/gpu_check.py --family qwen3 --width narrow --steps 2 --compile-decode on "$@"
python bench/gpu_check.py --family qwen3 --width full --steps 2 --lora-rank 64 \
    --compile-decode on "$@"
