#!/usr/bin/env bash
# A local S3-compatible server for the object-storage tests: moto's server (from the Python
# package index), in a virtual environment of its own made on first use. Serves until killed.
# Usage: bash tools/s3-server.sh PORT
set -euo pipefail
port="${1:?usage: bash tools/s3-server.sh PORT}"
venv="${GEMMA_BATCH_S3_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/s3-venv}"
pin="moto[server]==5.2.5"
mkdir -p "$(dirname "$venv")"
# One installer at a time (tests may start servers together).
exec 9>"$venv.lock"
flock 9
if [ "$(cat "$venv/.pin" 2>/dev/null)" != "$pin" ]; then
  echo "installing $pin into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "$pin"
  echo "$pin" > "$venv/.pin"
fi
flock -u 9
exec 9>&-
exec "$venv/bin/moto_server" -H 127.0.0.1 -p "$port"
