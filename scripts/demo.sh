#!/usr/bin/env bash
# Hearth's main job on the embedded defaults (SQLite, QEMU): build the CLI image if needed,
# boot a VM in a fresh network namespace, print its network configuration and agent health,
# then remove it. Run as root on Debian. Extra arguments go to `hearth demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec "${HEARTH_VENV:-.venv}/bin/hearth" demo "$@"
