#!/usr/bin/env bash
# README's main command: runs pipelines/demo.toml (the tiny Gemma 4 model over the sample
# document corpus) and prints where the results are and a summary. Rerunning it resumes: rows
# already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
cargo run --locked --quiet -- run pipelines/demo.toml "$@"
