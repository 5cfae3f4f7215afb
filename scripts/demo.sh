#!/usr/bin/env bash
# Hearth's main job on the embedded defaults (SQLite, QEMU, the bundled demo identity
# provider): build the browser and cli images if needed, start the controller and the
# identity provider in namespaces of their own, print the connect_url to open in a browser on
# this machine, and once you have signed in there, the stored credential status and a prompt
# answered by the demo CLI in your CLI VM.
# Run as root on Debian. Extra arguments go to `hearth demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec "${HEARTH_VENV:-.venv}/bin/hearth" demo "$@"
