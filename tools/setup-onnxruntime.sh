#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that gemma-batch loads at run time, taken from the
# onnxruntime Python wheel on the package index (no Python environment is changed).
#   bash tools/setup-onnxruntime.sh          # CPU: onnxruntime
#   bash tools/setup-onnxruntime.sh --gpu    # CUDA: onnxruntime-gpu (needs CUDA 12 + cuDNN 9 libraries)
# The library lands in ${GEMMA_BATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch}/onnxruntime/{cpu,gpu}/,
# which gemma-batch searches when ORT_DYLIB_PATH is not set.
set -euo pipefail
version=1.31.1
package=onnxruntime
kind=cpu
if [ "${1:-}" = "--gpu" ]; then package=onnxruntime-gpu; kind=gpu; fi
cache="${GEMMA_BATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch}"
dest="$cache/onnxruntime/$kind"
if [ -e "$dest/libonnxruntime.so" ] && [ -e "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$package==$version" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$package==$version"
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
tmp, dest = map(pathlib.Path, sys.argv[1:])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if "/capi/" in name and base.startswith("libonnxruntime"):
            (dest / base).write_bytes(z.read(name))
main = sorted(p for p in dest.glob("libonnxruntime.so.*"))
if not main:
    sys.exit(f"no libonnxruntime.so.* in {wheel.name}")
link = dest / "libonnxruntime.so"
if link.exists() or link.is_symlink():
    link.unlink()
link.symlink_to(main[-1].name)
PY
echo "$package==$version" > "$dest/VERSION"
echo "ONNX Runtime $version ($kind) installed in $dest" >&2
