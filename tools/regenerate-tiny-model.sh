#!/usr/bin/env bash
# Rebuild the tiny Gemma 4 test model, its ONNX export and the transformers goldens:
#   bash tools/regenerate-tiny-model.sh
# Makes a Python virtual environment from tools/requirements.txt (package index only).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
out=models/tiny-gemma4
rm -rf "$out"
"$py" tools/export_gemma4.py --tiny --out "$out" --quantize int8 --quantize q4 --fp16
"$py" tools/reference.py --checkpoint "$out/hf" --onnx "$out" --out "$out/goldens"
du -sh "$out"
