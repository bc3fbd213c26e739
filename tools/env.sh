# Shared set-up for the project's scripts: a build cache outside the clone and the ONNX
# Runtime library. Sourced, not run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/target}"
bash "$(dirname "${BASH_SOURCE[0]}")/setup-onnxruntime.sh"
