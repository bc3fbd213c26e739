# The Python environment of tools/ (requirements pinned in tools/requirements.txt), made on
# first use and brought up to date when the requirements change. Sourced, not run; sets $py.
venv="${GEMMA_BATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/tools-venv}"
requirements="$(dirname "${BASH_SOURCE[0]}")/requirements.txt"
stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$stamp" ]; then
  "$venv/bin/pip" install --quiet -r "$requirements" && echo "$stamp" > "$venv/.requirements-sha256"
fi
py="$venv/bin/python"
