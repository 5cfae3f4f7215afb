"""`hearth install` (hearth.install): the commented configuration file (kept when it is
there), HEARTH_HOME, and the shipped unit written for this machine, which systemd itself
accepts (`systemd-analyze verify`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hearth import settings_file
from hearth.config import Settings
from hearth.install import UNIT_NAME, install, stop_timeout
from tests.packages import missing


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEARTH_CONFIG", str(tmp_path / "etc/hearth/hearth.toml"))
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "var/lib/hearth"))
    monkeypatch.setenv("HEARTH_SHUTDOWN_GRACE", "40")
    return install(tmp_path / "units")


def unit_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and line[0] not in "#["]


def test_install_writes_the_commented_file_the_home_and_the_unit(installed, tmp_path: Path) -> None:
    config = tmp_path / "etc/hearth/hearth.toml"
    home = tmp_path / "var/lib/hearth"
    assert (installed.config, installed.config_written) == (config, True)
    assert config.read_text() == settings_file.render(Settings)
    assert config.stat().st_mode & 0o777 == 0o600
    assert home.is_dir() and home.stat().st_mode & 0o777 == 0o700
    assert installed.unit == tmp_path / "units" / UNIT_NAME

    lines = unit_lines(installed.unit)
    for wanted in (
        "Type=notify",
        "Restart=on-failure",
        "KillMode=process",
        "StandardOutput=journal",
        f"Environment=HEARTH_CONFIG={config}",
        f"ReadWritePaths={home}",
        f"ExecStart={sys.executable} -m hearth serve",
        f"ExecStartPre=+{sys.executable} -m hearth net up",
        f"TimeoutStopSec={stop_timeout(Settings(shutdown_grace=40))}s",
    ):
        assert wanted in lines
    assert stop_timeout(Settings(shutdown_grace=40)) > 40


def test_a_second_install_keeps_the_operators_file(installed) -> None:
    installed.config.write_text("[vms]\nmemory_mib = 4096\n")
    again = install(installed.unit.parent)
    assert again.config_written is False
    assert installed.config.read_text() == "[vms]\nmemory_mib = 4096\n"


def test_systemd_accepts_the_unit(installed) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip(missing("systemd", "systemd-analyze"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed.unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    # verify exits 0 on unknown keys and bad values too: every line it prints is a problem.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
