#!/usr/bin/env bash
# The test suite: installs what it needs, builds (or takes from the cache) the images the VM
# tests boot, then runs ruff and pytest. Run as root on Debian.
#
# Images are cached outside the clone, keyed by their inputs (HEARTH_TEST_HOME, default
# /var/cache/hearth-test): a repeat run with unchanged inputs builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
venv="${HEARTH_VENV:-.venv}"

export HEARTH_HOME="${HEARTH_TEST_HOME:-/var/cache/hearth-test}"
"$venv/bin/hearth" image build cli browser
export HEARTH_TEST_IMAGES="$HEARTH_HOME/images"
# Every package is installed now: a test skipped for a missing one fails (tests/packages.py).
export HEARTH_TEST_NO_PACKAGE_SKIPS=1

"$venv/bin/ruff" check src tests bench
"$venv/bin/ruff" format --check src tests bench
# The slowest tests are listed at the end: where the next minutes of CI are to be found.
exec "$venv/bin/pytest" -q -p no:cacheprovider --durations=25 "$@"
