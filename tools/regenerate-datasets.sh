#!/usr/bin/env bash
# Regenerates the sample corpora in datasets/ (deterministic; needs the pinned Pillow).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
"$py" datasets/generate.py
