#!/usr/bin/env bash
# Create benchmarks/.venv-original with python-pyper 0.4.4 (the original project) and mpire,
# used only as contenders by benchmarks/run.py and benchmarks/process.py. Neither is ever a
# dependency of ours.
#
#   bash benchmarks/setup_original.sh            # uses python3.11 (pyenv) or $PYTHON
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-original"

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    for candidate in "$HOME/.pyenv/versions/3.11.7/bin/python3" python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$candidate"; return
        fi
    done
    echo "no Python 3.11 found; set PYTHON=/path/to/python3.11" >&2
    exit 1
}

py="$(pick_python)"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'python-pyper==0.4.4' mpire
"$venv/bin/python" - <<'PY'
import importlib.metadata, sys
v = importlib.metadata.version
print("python", sys.version.split()[0], "python-pyper", v("python-pyper"), "mpire", v("mpire"))
PY
echo "ready: $venv"
