#!/usr/bin/env bash
# Runs an exported model directory (default: models/tiny-gemma4) through transformers.js, the
# community runtime of the ONNX layout, and compares its greedy tokens with the goldens:
#   bash tools/check-transformers-js.sh [MODEL_DIR]
# Installs @huggingface/transformers (version $GEMMA_BATCH_TRANSFORMERS_JS, default below) with
# `npm install --ignore-scripts` into
# ${GEMMA_BATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch}/transformers-js, reused on
# later runs; only that first install needs the npm registry. The model is read from the local
# path with remote models disabled.
# Prints one line per golden case and exits non-zero on a mismatch, a load failure or when no
# case was compared. Without `node` it prints a message and exits 0 (the only skip); with node
# but without npm and no earlier install it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/tiny-gemma4}"
version="${GEMMA_BATCH_TRANSFORMERS_JS:-4.3.2}"

if ! command -v node >/dev/null 2>&1; then
  echo "check-transformers-js: skipped, node is not installed (install Node.js 20+ to run it)"
  exit 0
fi

dir="${GEMMA_BATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch}/transformers-js"
stamp="$dir/.installed-version"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$version" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "check-transformers-js: error: npm is missing; it is needed once to install @huggingface/transformers" >&2
    exit 1
  fi
  echo "check-transformers-js: installing @huggingface/transformers@$version into $dir" >&2
  mkdir -p "$(dirname "$dir")"
  # Install beside the cache directory and move it in place, so that an interrupted or
  # concurrent install never leaves a half-written one to reuse.
  tmp="$(mktemp -d "$dir.XXXXXX")"
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  echo '{"name": "gemma-batch-transformers-js-check", "private": true}' >"$tmp/package.json"
  (cd "$tmp" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
    "@huggingface/transformers@$version" >&2)
  echo "$version" >"$tmp/.installed-version"
  rm -rf "$dir"
  mv "$tmp" "$dir" || [ -f "$stamp" ]
  trap - EXIT
fi

node tools/check-transformers-js.mjs "$dir" "$model"
