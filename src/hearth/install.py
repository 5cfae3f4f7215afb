"""`hearth install`: Hearth as a systemd service on this machine.

Writes the commented configuration file (hearth.settings_file.render) unless one is there
(the operator's file is never overwritten), creates HEARTH_HOME, and writes the unit shipped
in the package (hearth/files/hearth.service) with this machine's Python, HEARTH_HOME,
configuration file and stop timeout in place of its defaults, as the settings read from
that file say. Enabling and starting the unit is left to systemctl.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hearth import config
from hearth.api.serving import CLOSE_WAIT
from hearth.config import Settings
from hearth.core.prompts import CANCEL_SETTLE
from hearth.guest.fileio import write_atomic
from hearth.settings_file import located, render

UNIT_DIR = Path("/etc/systemd/system")
UNIT_NAME = "hearth.service"
SHIPPED_PYTHON = "/usr/bin/python3"
STOP_MARGIN = 15.0  # seconds beyond the stop's own budget before systemd kills the controller


@dataclass(frozen=True)
class Installed:
    unit: Path
    config: Path
    config_written: bool  # False: a configuration file was there already, and kept
    directories: tuple[Path, ...]


def shipped_unit() -> str:
    return resources.files("hearth").joinpath("files", UNIT_NAME).read_text()


def stop_timeout(settings: Settings) -> int:
    """Seconds systemd waits for a stop: the prompts' grace, the cut-short prompts' end, the
    open connections' close, and a margin."""
    return int(settings.shutdown_grace + CANCEL_SETTLE + CLOSE_WAIT + STOP_MARGIN)


def unit(settings: Settings, config_file: Path, python: str = sys.executable) -> str:
    """The shipped unit, for this machine."""
    values = {
        "Environment": f"HEARTH_CONFIG={config_file}",
        "ReadWritePaths": str(settings.home),
        "TimeoutStopSec": f"{stop_timeout(settings)}s",
    }
    lines = []
    for line in shipped_unit().splitlines():
        key, _, value = line.partition("=")
        if key in values and not line.startswith("#"):
            line = f"{key}={values[key]}"
        elif key in ("ExecStart", "ExecStartPre"):
            line = line.replace(SHIPPED_PYTHON, python)
        lines.append(line)
    return "\n".join(lines) + "\n"


def install(unit_dir: Path = UNIT_DIR, python: str = sys.executable) -> Installed:
    """Install for the configuration file this process reads (hearth.settings_file.located)."""
    path, _ = located()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # root only: secrets (master_key, upstream_proxy) may be written in it
        write_atomic(path, render(Settings).encode(), 0o600, replace=False)
        written = True
    except FileExistsError:
        written = False
    current = config.load()  # that file's settings, under the environment
    current.home.mkdir(parents=True, exist_ok=True)
    current.home.chmod(0o700)  # the database and the master key live there
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit_path = unit_dir / UNIT_NAME
    write_atomic(unit_path, unit(current, path, python).encode(), 0o644)
    return Installed(unit_path, path, written, (path.parent, current.home))
