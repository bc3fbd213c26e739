#!/usr/bin/env bash
# Whole-process throughput: items/s of one `gemma-batch bench generate` process against one
# plain Python ONNX Runtime loop process (tools/bench_ort_loop.py) over the same prompts, per
# batch size, timed from process start to exit (loading the model, warm-up and interpreter
# start-up included): what a user running either over a small job waits for.
#   bash tools/bench-process.sh [--model models/tiny-gemma4] [--batch 1,8] [--prompts 64]
#                               [--new-tokens 32] [--threads 2]
# The Python loop must generate the same ids (--strict). Figures go to reports/out/bench-process/.
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/tiny-gemma4 batches=1,8 prompts=64 tokens=32 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --batch) batches="$2"; shift 2 ;;
    --prompts) prompts="$2"; shift 2 ;;
    --new-tokens) tokens="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

source tools/venv.sh
source tools/bench-bin.sh
out=reports/out/bench-process
mkdir -p "$out"
now() { date +%s.%N; }

echo "model $model: $prompts prompts, $tokens new tokens at most, $threads threads; seconds are whole processes"
printf '%6s %14s %14s %14s %14s %8s\n' batch "gemma-batch s" "items/s" "python s" "items/s" ratio
for b in ${batches//,/ }; do
  json="$out/batch-$b.json"
  t0=$(now)
  "$bin" bench generate --model "$model" --batch "$b" --prompts "$prompts" --new-tokens "$tokens" \
    --threads "$threads" --json "$json" > "$out/batch-$b-gemma-batch.log"
  t1=$(now)
  "$py" tools/bench_ort_loop.py "$json" --strict > "$out/batch-$b-python.log" 2>&1
  t2=$(now)
  "$py" - "$b" "$prompts" "$t0" "$t1" "$t2" <<'PY'
import sys
b, n, t0, t1, t2 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
ours, theirs = t1 - t0, t2 - t1
print(f"{b:>6} {ours:14.2f} {n / ours:14.2f} {theirs:14.2f} {n / theirs:14.2f} {theirs / ours:7.2f}x")
PY
done
