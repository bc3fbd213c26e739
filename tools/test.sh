#!/usr/bin/env bash
# Runs the whole test suite (README's test command). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
# The report test opens the HTML report in headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium (headless browser for the report test)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "error: headless Chromium is missing; install your system's chromium package" >&2
    exit 1
  fi
fi
# transformers.js runs the tiny export against the goldens when node is installed (it skips itself otherwise).
bash tools/check-transformers-js.sh
cargo test --locked "$@"
# The runtime against transformers on the small trained model too (its goldens: tools/reference.py).
if [ $# -eq 0 ]; then
  GEMMA_BATCH_TEST_MODEL=models/small-gemma4 cargo test --locked --test runtime_goldens
fi
