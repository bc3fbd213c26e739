#!/usr/bin/env bash
# Generation throughput of gemma-batch against the plain Python ONNX Runtime loop over the same
# graphs, in one run on one machine:
#   bash tools/bench-generate.sh [gemma-batch bench generate options...]
# 1. makes the benchmark model models/bench-gemma4 if it is missing or stale
#    (tools/make_bench_gemma4.py: random weights, E2B's layer pattern, about 200M parameters);
# 2. runs gemma-batch bench generate --model models/bench-gemma4 --batch 1,8 --prompts 64
#    --new-tokens 32 --json reports/out/bench-generate.json (options given here replace these
#    defaults; others pass through);
# 3. runs tools/bench_ort_loop.py on the same prompts at the same batch sizes and thread count,
#    without and with num_logits_to_keep, checks that it generates the same ids, and prints the
#    table with the ratios gemma-batch / python and gemma-batch batch 8 / batch 1.
# The binary is GEMMA_BATCH_BIN if set, else the checkout built with cargo build --locked
# (the dev profile of the test command; incremental). Set PYTHON_LOOP_ARGS for extra
# tools/bench_ort_loop.py options (e.g. --strict).
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/bench-gemma4
json=reports/out/bench-generate.json
have_batch= have_prompts= have_tokens=
pass=() loop=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --model=*) model="${1#--model=}"; shift ;;
    --json) json="$2"; shift 2 ;;
    --json=*) json="${1#--json=}"; shift ;;
    --batch|--batch=*) have_batch=1; pass+=("$1"); shift ;;
    --prompts|--prompts=*|--prompts-file|--prompts-file=*) have_prompts=1; pass+=("$1"); shift ;;
    --dtype) loop+=("$1" "$2"); pass+=("$1" "$2"); shift 2 ;;
    --dtype=*) loop+=("$1"); pass+=("$1"); shift ;;
    --new-tokens|--new-tokens=*) have_tokens=1; pass+=("$1"); shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ -n "$have_batch" ] || pass+=(--batch 1,8)
[ -n "$have_prompts" ] || pass+=(--prompts 64)
[ -n "$have_tokens" ] || pass+=(--new-tokens 32)

source tools/venv.sh
# The benchmark model: made (or remade when its scripts changed) only at the default path.
if [ "$model" = models/bench-gemma4 ] || [ "$model" = models/bench-gemma4/ ]; then
  "$py" tools/make_bench_gemma4.py --out models/bench-gemma4
elif [ ! -d "$model" ]; then
  echo "error: model directory $model not found" >&2
  exit 1
fi

source tools/bench-bin.sh

mkdir -p "$(dirname "$json")"
rm -f "$json"
echo "+ $bin bench generate --model $model ${pass[*]} --json $json" >&2
# It exits 1 when outputs differ across batch sizes, after writing the JSON: compare anyway.
rust=0
"$bin" bench generate --model "$model" "${pass[@]}" --json "$json" || rust=$?
[ -f "$json" ] || exit "$rust"

# The Python loop reads prompts, batch sizes, threads and the device used from the JSON.
# shellcheck disable=SC2086
"$py" tools/bench_ort_loop.py "$json" --model "$model" --both --out "${json%.json}-python.json" \
  ${loop[@]+"${loop[@]}"} ${PYTHON_LOOP_ARGS:-}
exit "$rust"
