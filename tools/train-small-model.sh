#!/usr/bin/env bash
# Rebuild the small trained Gemma 4 (models/small-gemma4): its held-out sets, the training (about
# an hour on two CPU cores; deterministic), the ONNX export and the transformers goldens the
# runtime tests compare against:
#   bash tools/train-small-model.sh
# Makes a Python virtual environment from tools/requirements.txt (package index only).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
out=models/small-gemma4
"$py" tools/small_corpus.py --out evals/known
rm -rf "$out"
"$py" tools/train_small_gemma4.py --out "$out"
"$py" tools/reference.py --checkpoint "$out/hf" --onnx "$out" --out "$out/goldens"
du -sh "$out"
