#!/bin/sh
# Run the original project's tests (pyper-dev/pyper: tests/test_sync.py,
# tests/test_async.py, tests/test_task.py) against the pyper installed in the
# current environment. Nothing of the original is copied into this repository.
#
#   sh scripts/run_original_tests.sh [PATH]
#
# Where the tests come from:
#   - PATH (or env ORIGINAL_PYPER): a checkout of github.com/pyper-dev/pyper, an
#     unpacked sdist, or an sdist .tar.gz; otherwise
#   - the sdist of python-pyper==$PYPER_ORIGINAL_VERSION (default 0.4.4) from PyPI,
#     downloaded into a temporary directory (the sdists 0.3.1 to 0.4.4 ship tests/;
#     0.4.4's are identical to the GitHub main branch's).
#
# Environment:
#   PYTHON   the interpreter whose environment has OUR pyper installed
#            (default: .venv-3.11/bin/python of this repository if it exists,
#            else python3). pytest, pytest-asyncio and pytest-timeout are
#            installed into it if missing (test tools only).
#   PYPER_ORIGINAL_SKIP_MULTIPROCESS=1   deselect the 3 tests that run process
#            stages (multiprocess=True):
#              tests/test_sync.py::test_multiprocessed_error_handling
#              tests/test_async.py::test_multiprocessed_error_handling
#              tests/test_async.py::test_unified_pipeline
#   PYPER_ORIGINAL_VERSION   which python-pyper sdist to download (default 0.4.4)
#   PYPER_ORIGINAL_TIMEOUT   per-test timeout in seconds (default 120)
# Extra arguments after PATH are passed to pytest (use "" as PATH to download).
#
# The tests run from a temporary directory holding only them, with the original's
# own pytest settings (not this repository's), and refuse to run if 'import pyper'
# finds the original (its code lives in pyper/_core/).
#
# Exit status: pytest's (non-zero if any selected test fails); 2 for setup errors.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv-3.11/bin/python" ]; then
        PYTHON="$REPO/.venv-3.11/bin/python"
    else
        PYTHON=python3
    fi
fi
case $PYTHON in
    /*) ;;
    */*) PYTHON="$(pwd)/$PYTHON" ;;  # relative path: keep it valid after the cd below
esac
ORIGINAL="${ORIGINAL_PYPER:-}"
if [ $# -gt 0 ]; then
    ORIGINAL=$1
    shift
fi
VERSION="${PYPER_ORIGINAL_VERSION:-0.4.4}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyper-original.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

die() {
    echo "run_original_tests: $*" >&2
    exit 2
}

# 1. Get the original's tests/ into $WORK/src.
unpack() {  # sdist.tar.gz -> $WORK/src
    mkdir -p "$WORK/unpacked"
    tar -xzf "$1" -C "$WORK/unpacked"
    set -- "$WORK/unpacked"/*
    [ $# -eq 1 ] && [ -d "$1" ] || die "unexpected layout in the sdist"
    mv "$1" "$WORK/src"
}
if [ -n "$ORIGINAL" ]; then
    case $ORIGINAL in /*) ;; *) ORIGINAL="$(pwd)/$ORIGINAL" ;; esac
    if [ -d "$ORIGINAL/tests" ]; then
        mkdir -p "$WORK/src"
        cp -R "$ORIGINAL/tests" "$WORK/src/tests"
        [ ! -f "$ORIGINAL/pyproject.toml" ] || cp "$ORIGINAL/pyproject.toml" "$WORK/src/"
        echo "original tests: from $ORIGINAL"
    elif [ -d "$ORIGINAL/objects" ] && [ -f "$ORIGINAL/HEAD" ]; then
        mkdir -p "$WORK/src"
        git --git-dir="$ORIGINAL" archive HEAD tests pyproject.toml | tar -x -C "$WORK/src"
        echo "original tests: from $ORIGINAL (bare git repository, HEAD)"
    elif [ -f "$ORIGINAL" ]; then
        unpack "$ORIGINAL"
        echo "original tests: from $ORIGINAL"
    else
        die "$ORIGINAL: no such directory or sdist"
    fi
else
    echo "original tests: downloading the sdist of python-pyper==$VERSION from PyPI"
    mkdir -p "$WORK/dl"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary python-pyper \
        "python-pyper==$VERSION" -d "$WORK/dl" >&2 \
        || die "could not download python-pyper==$VERSION from PyPI; pass a checkout of
  https://github.com/pyper-dev/pyper as the first argument or as ORIGINAL_PYPER"
    SDIST=
    for f in "$WORK/dl"/*.tar.gz; do SDIST=$f; done
    [ -f "$SDIST" ] || die "pip did not produce an sdist for python-pyper==$VERSION"
    unpack "$SDIST"
fi
TESTS="test_sync.py test_async.py test_task.py"
for t in $TESTS; do
    [ -f "$WORK/src/tests/$t" ] || die "tests/$t not found in the original's sources
  (this sdist may not ship tests/; use PYPER_ORIGINAL_VERSION=0.4.4, or pass a
  checkout of https://github.com/pyper-dev/pyper as the first argument or as ORIGINAL_PYPER)"
done

# 2. A run directory holding only the tests and the original's pytest settings, so
#    that neither the original's src/pyper nor this repository's pytest config
#    (filterwarnings=error, timeouts, leak fixture) is in play.
RUN="$WORK/run"
mkdir -p "$RUN/tests"
for t in $TESTS; do
    cp "$WORK/src/tests/$t" "$RUN/tests/"
done
if [ -f "$WORK/src/pyproject.toml" ] && grep -q '^\[tool\.pytest\.ini_options\]' "$WORK/src/pyproject.toml"; then
    # Only the original's pytest table (asyncio_default_fixture_loop_scope = "function").
    awk '/^\[/{on = ($0 == "[tool.pytest.ini_options]")} on' "$WORK/src/pyproject.toml" >"$RUN/pyproject.toml"
else
    printf '[tool.pytest.ini_options]\n' >"$RUN/pyproject.toml"
fi
# Which pyper do the tests import? Checked before pytest and again inside it (its
# sys.path handling differs); the original's must not be the one.
cat >"$RUN/tests/_which_pyper.py" <<'EOF'
import importlib.metadata
import importlib.util
import os
import sys


def check():
    import pyper

    where = os.path.dirname(os.path.abspath(pyper.__file__))
    # Every release of the original (0.1.0 to 0.4.4) keeps its code in pyper/_core/;
    # ours does not. (The distribution name cannot tell them apart: ours may be
    # published as python-pyper too.)
    if importlib.util.find_spec("pyper._core") is not None:
        sys.exit(f"'import pyper' finds the ORIGINAL pyper ({where}, it has pyper/_core); "
                 "install ours into this environment instead")
    dists = importlib.metadata.packages_distributions().get("pyper", [])
    about = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in dists) or "no distribution"
    return f"{where} ({about})"


if __name__ == "__main__":
    print("pyper under test: " + check())
EOF
cat >"$RUN/tests/conftest.py" <<'EOF'
from _which_pyper import check

_file = check()


def pytest_report_header(config):
    return "pyper under test: " + _file
EOF

# 3. Test tools, in the target environment only.
cd "$RUN"
"$PYTHON" -c 'import pyper' 2>/dev/null \
    || die "$PYTHON cannot import pyper; install ours first: $PYTHON -m pip install -e $REPO"
if ! "$PYTHON" -c 'import pytest, pytest_asyncio, pytest_timeout' 2>/dev/null; then
    echo "installing test tools (pytest, pytest-asyncio, pytest-timeout) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install --quiet 'pytest>=8.3.3' 'pytest-asyncio>=0.24' 'pytest-timeout>=2.3' >&2
fi
"$PYTHON" tests/_which_pyper.py || exit 2

# 4. Run ("$@" now holds the extra pytest arguments).
if [ "${PYPER_ORIGINAL_SKIP_MULTIPROCESS:-0}" = 1 ]; then
    echo "PYPER_ORIGINAL_SKIP_MULTIPROCESS=1: deselecting the 3 tests that run process stages"
    set -- \
        --deselect tests/test_sync.py::test_multiprocessed_error_handling \
        --deselect tests/test_async.py::test_multiprocessed_error_handling \
        --deselect tests/test_async.py::test_unified_pipeline "$@"
fi
rc=0
"$PYTHON" -m pytest -p no:cacheprovider -c "$RUN/pyproject.toml" --rootdir "$RUN" \
    --timeout "${PYPER_ORIGINAL_TIMEOUT:-120}" -rfE --tb=short "$@" tests || rc=$?
exit "$rc"
