# The gemma-batch binary the benchmark scripts run, as $bin: GEMMA_BATCH_BIN if set, else the
# checkout built (incrementally: a no-op when current) in the dev profile the test command
# uses, so figures are never from a stale binary. Also installs the ONNX Runtime library it
# loads (a no-op once installed). Sourced, not run, from the repository root.
if [ -n "${GEMMA_BATCH_BIN:-}" ]; then
  bin="$GEMMA_BATCH_BIN"
else
  source tools/env.sh
  cargo build --locked --quiet
  bin="$CARGO_TARGET_DIR/debug/gemma-batch"
fi
bash tools/setup-onnxruntime.sh
