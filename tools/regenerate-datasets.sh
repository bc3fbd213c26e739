#!/usr/bin/env bash
# Regenerates the sample corpora in datasets/ (deterministic; needs the pinned Pillow).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GEMMA_BATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/tools-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r tools/requirements.txt
fi
"$venv/bin/python" datasets/generate.py
