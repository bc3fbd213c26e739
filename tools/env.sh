# Shared set-up for the project's scripts: build prerequisites, a build cache outside the
# clone and the ONNX Runtime library. Sourced, not run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/target}"
# lance's build script compiles protobuf definitions.
if ! command -v protoc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing protobuf-compiler (protoc), needed to build lance" >&2
    (apt-get update -qq && apt-get install -y -qq protobuf-compiler) >/dev/null
  else
    echo "error: protoc is missing; install your system's protobuf-compiler package" >&2
    exit 1
  fi
fi
bash "$(dirname "${BASH_SOURCE[0]}")/setup-onnxruntime.sh"
