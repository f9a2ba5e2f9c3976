#!/bin/sh
# Install pyper with its test tools into a fresh virtual environment and run the
# whole suite: pytest (with its leak fixture and timeouts), the process stages again
# under the fork server, the concurrency tests
# again with a tiny thread switch interval (and once more as a free-threaded build
# would share work: PYPER_NO_GIL_CLAIMS), mypy --strict, and the original Pyper's
# own tests (all 39) against ours (scripts/run_original_tests.sh), then the optional
# extras: cloudpickle (lambdas in processes; with loky, an executor of the user's), postgres (a
# journal in a real PostgreSQL server), docs (the site, built strictly and looked at
# in a headless Chromium) and ray (stages on a local Ray cluster).
# PYTHON picks the interpreter (default python3); the venv is .venv-<version>.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=".venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
"$VENV/bin/python" -m pytest -q
# Process stages again with the fork server (the default forks on Linux while no thread runs).
PYPER_START_METHOD=forkserver "$VENV/bin/python" -m pytest -q -k process \
    tests/test_process.py tests/test_policies.py tests/test_metrics.py tests/test_adaptive.py \
    tests/test_bounds.py tests/test_lifecycle_matrix.py
PYPER_SWITCH_INTERVAL=1e-6 "$VENV/bin/python" -m pytest -q tests/test_semantics.py tests/test_bounds.py tests/test_lifecycle.py
PYPER_NO_GIL_CLAIMS=1 PYPER_SWITCH_INTERVAL=1e-6 "$VENV/bin/python" -m pytest -q tests/test_semantics.py tests/test_bounds.py tests/test_lifecycle.py
"$VENV/bin/python" -m mypy
PYTHON="$VENV/bin/python" sh scripts/run_original_tests.sh
# Last, the optional cloudpickle extra: lambdas and closures in process stages.
# loky's reusable executor (it brings cloudpickle) for the tests of an executor of the user's.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[cloudpickle]' 'loky>=3.4'
PYPER_WITH_CLOUDPICKLE=1 "$VENV/bin/python" -m pytest -q tests/test_cloudpickle.py tests/test_futures.py
# The postgres extra (psycopg) and a PostgreSQL server (Debian's postgresql package,
# installed here when it is missing and this is root with apt-get): the exactly-once sink
# against a real server, started once for the file (tests/test_postgres.py skips, saying
# so, where there is none).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[postgres]'
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q postgresql >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
fi
PYPER_WITH_POSTGRES=1 "$VENV/bin/python" -m pytest -q tests/test_postgres.py
# The documentation site: built strictly, then opened in a headless Chromium (Debian's
# chromium package, installed here when it is missing and this is root with apt-get;
# elsewhere set PYPER_CHROMIUM to a Chrome or Chromium binary).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[docs]'
if [ -z "${PYPER_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
PYPER_WITH_DOCS=1 "$VENV/bin/python" -m pytest -q tests/test_site.py
# Last, the optional ray extra: stages on a local two-node Ray cluster, started once for
# the whole file (tests/test_ray.py).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[ray]'
PYPER_WITH_RAY=1 "$VENV/bin/python" -m pytest -q tests/test_ray.py
