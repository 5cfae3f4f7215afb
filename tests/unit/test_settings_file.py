"""The configuration file (hearth.settings_file): every setting in exactly one table, the
file's values read and the environment over them, and a file that gets something wrong
stopping the start with an error that names the key as written, the file, and what is
allowed, never the value."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hearth import config, settings_file
from hearth.config import Settings
from hearth.settings_file import TABLES, SettingsError

REPO = Path(__file__).parents[2]
SECRET = "hunter2-not-for-logs"


@pytest.fixture
def no_hearth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HEARTH_* setting from the environment of whoever runs the tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"HEARTH_{name.upper()}", raising=False)


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "hearth.toml"
    path.write_text(text)
    monkeypatch.setenv("HEARTH_CONFIG", str(path))
    return path


def load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[str, Path]:
    path = write_config(tmp_path, monkeypatch, text)
    with pytest.raises(SettingsError) as caught:
        config.load()
    return str(caught.value), path


def test_every_setting_is_in_exactly_one_table_and_every_key_is_a_setting() -> None:
    keys = [name for names in TABLES.values() for name in names]
    assert sorted(keys) == sorted(Settings.model_fields), "hearth/settings_file.py TABLES"
    assert len(keys) == len(set(keys))


def test_every_setting_has_its_one_line_explanation() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and "\n" not in field.description.strip(), name


def test_the_file_sets_settings_by_table_and_the_environment_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hearth_env: None
) -> None:
    write_config(
        tmp_path,
        monkeypatch,
        '[vms]\nmemory_mib = 2048\nvmm = "firecracker"\n'
        '[egress]\negress_allow = { demo = ["*.Example.org"] }\n'
        f'[storage]\nhome = "{tmp_path}/home"\n'
        "[controller]\nshutdown_grace = 5\n",
    )
    loaded = config.load()
    assert (loaded.memory_mib, loaded.vmm, loaded.home) == (2048, "firecracker", tmp_path / "home")
    assert loaded.egress_allow == {"demo": ["*.example.org"]}  # the settings' own validation
    assert loaded.shutdown_grace == 5.0

    monkeypatch.setenv("HEARTH_MEMORY_MIB", "4096")
    assert config.load().memory_mib == 4096
    assert config.load().vmm == "firecracker"  # what the environment leaves, the file says


def test_a_missing_default_file_means_the_defaults_and_a_missing_named_one_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hearth_env: None
) -> None:
    monkeypatch.delenv("HEARTH_CONFIG")
    monkeypatch.setattr(settings_file, "DEFAULT_PATH", tmp_path / "none.toml")
    assert config.load() == Settings.model_validate({})

    monkeypatch.setenv("HEARTH_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(SettingsError, match=re.escape(f"no configuration file {tmp_path}")):
        config.load()


def test_an_unknown_key_is_named_as_written_with_the_file_and_the_keys_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message, path = load_error(tmp_path, monkeypatch, f'[vms]\nmemory = "{SECRET}"\n')
    assert message.startswith(f"{path}: unknown setting vms.memory;")
    assert "memory_mib" in message and "vcpus" in message
    assert SECRET not in message

    message, _ = load_error(tmp_path, monkeypatch, "[network]\nmemory_mib = 1\n")
    assert message.endswith("unknown setting network.memory_mib; it belongs in [vms]")
    message, _ = load_error(tmp_path, monkeypatch, "[virtual_machines]\nvcpus = 1\n")
    assert "unknown table [virtual_machines]; the tables are storage, images, vms" in message
    message, _ = load_error(tmp_path, monkeypatch, "vcpus = 4\n")
    assert message.endswith("vcpus is not a table; write it in [vms]")


def test_a_bad_value_is_named_as_written_with_what_is_allowed_never_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hearth_env: None
) -> None:
    message, path = load_error(tmp_path, monkeypatch, f'[vms]\nvmm = "{SECRET}"\n')
    assert f"vms.vmm in {path}" in message
    assert "'qemu' or 'firecracker'" in message
    assert SECRET not in message

    proxy = f"ftp://user:{SECRET}@proxy.example:3128"
    message, _ = load_error(tmp_path, monkeypatch, f'[egress]\nupstream_proxy = "{proxy}"\n')
    assert f"egress.upstream_proxy in {path}" in message and "scheme must be one of" in message
    assert SECRET not in message

    message, _ = load_error(tmp_path, monkeypatch, "[vms]\nvcpus = [1]\n")
    assert "vms.vcpus" in message and "valid integer" in message

    message, _ = load_error(tmp_path, monkeypatch, "[vms\nvcpus = 1\n")
    assert message.startswith(f"{path} is not TOML: ") and "line 1" in message


def test_a_bad_value_from_the_environment_is_named_as_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, "[vms]\nvcpus = 2\n")
    monkeypatch.setenv("HEARTH_VCPUS", SECRET)
    with pytest.raises(SettingsError) as caught:
        config.load()
    assert "HEARTH_VCPUS (environment)" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_commented_file_lists_every_setting_at_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hearth_env: None
) -> None:
    text = settings_file.render(Settings)
    assert tomllib.loads(text) == {table: {} for table in TABLES}  # all commented out
    comments = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    for name, field in Settings.model_fields.items():
        assert field.description in comments, name
        assert re.search(rf"^# {name} = ", text, re.MULTILINE), name

    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    write_config(tmp_path, monkeypatch, uncommented)
    assert config.load() == Settings.model_validate({})


def test_the_command_stops_on_a_bad_file_named_by_config(tmp_path: Path) -> None:
    path = tmp_path / "hearth.toml"
    path.write_text("[vms]\nvcpus = 2\nmemory = 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "hearth", "--config", str(path), "vm", "ls"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{path}: unknown setting vms.memory" in " ".join(done.stderr.split())
