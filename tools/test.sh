#!/usr/bin/env bash
# Runs the whole test suite (README's test command). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
cargo test --locked "$@"
