#!/bin/sh
# Install pyper with its test tools into a fresh virtual environment and run the
# whole suite: pytest (with its leak fixture and timeouts) and mypy --strict.
# PYTHON picks the interpreter (default python3); the venv is .venv-<version>.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=".venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
"$VENV/bin/python" -m pytest -q
"$VENV/bin/python" -m mypy
