# The Python environment of tools/ (requirements pinned in tools/requirements.txt), made on
# first use. Sourced, not run; sets $py.
venv="${GEMMA_BATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-batch/tools-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$(dirname "${BASH_SOURCE[0]}")/requirements.txt"
fi
py="$venv/bin/python"
