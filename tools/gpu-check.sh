#!/usr/bin/env bash
# Runs the CUDA checks on a machine with an NVIDIA GPU: the transformers goldens and the
# continuous-batching tests on ONNX Runtime's CUDA execution provider (KV cache kept in
# device memory between steps), then the generation benchmark with --device cuda.
#   bash tools/gpu-check.sh                 # tiny model goldens + benchmark
#   bash tools/gpu-check.sh models/bench-gemma4   # also benchmark this model directory
# Needs: nvidia-smi, the onnxruntime-gpu library (installed here by
# tools/setup-onnxruntime.sh --gpu) and CUDA 12 + cuDNN 9 libraries on the loader path.
# Without a GPU it says so and exits 2, so a skipped check never reads as a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing); nothing was checked" >&2
  exit 2
fi
nvidia-smi -L
source tools/env.sh
bash tools/setup-onnxruntime.sh --gpu
export ORT_DYLIB_PATH="${GEMMA_BATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch}/onnxruntime/gpu/libonnxruntime.so"
# The ONNX Runtime tests of the goldens, on CUDA (tract stays on the CPU).
GEMMA_BATCH_TEST_DEVICE=cuda cargo test --locked --test runtime_goldens -- ort_
cargo build --locked --release
bin="${CARGO_TARGET_DIR:-target}/release/gemma-batch"
"$bin" bench generate --model models/tiny-gemma4 --device cuda --batch 1,8 --prompts 32 --new-tokens 16
for model in "$@"; do
  "$bin" bench generate --model "$model" --device cuda --batch 1,8,32 --prompts 64 --new-tokens 32
done
