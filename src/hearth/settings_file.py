"""The configuration file: Hearth's settings in TOML tables, e.g. `[vms] memory_mib = 1024`.

/etc/hearth/hearth.toml by default (missing: the defaults), or the file HEARTH_CONFIG names
(`hearth --config PATH` sets it; missing: an error). The environment overrides the file.
TABLES is the one map from the file's `table.key` to a setting; its keys are the settings'
own names, so `vms.memory_mib` and HEARTH_MEMORY_MIB are the same setting. `render` writes
the commented file `hearth install` puts in place, from the settings' defaults and
docstrings.
"""

from __future__ import annotations

import json
import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, TomlConfigSettingsSource

from hearth.errors import HearthError

DEFAULT_PATH = Path("/etc/hearth/hearth.toml")
PATH_VARIABLE = "HEARTH_CONFIG"
ENV_PREFIX = "HEARTH_"

TABLES: dict[str, tuple[str, ...]] = {
    "storage": ("home", "database_url", "master_key"),
    "images": ("suite", "mirror", "components"),
    "vms": (
        "vmm",
        "qemu_accel",
        "firecracker_bin",
        "jailer_bin",
        "vcpus",
        "browser_memory_mib",
        "cli_memory_mib",
        "memory_mib",
        "boot_timeout",
        "agent_poll_interval",
        "qemu_tb_size_mib",
        "free_page_reporting",
    ),
    "network": ("netns", "controller_netns", "bridge", "cidr", "link_cidr", "tap_prefix"),
    "egress": (
        "egress_allow",
        "egress_deny",
        "google_sso",
        "egress_hosts",
        "egress_resolver",
        "upstream_proxy",
        "upstream_proxies",
        "vm_ca_file",
    ),
    "controller": (
        "public_url",
        "session_ttl",
        "demo_issuer",
        "metrics_listen",
        "shutdown_grace",
    ),
    "pool": ("pool_browser", "pool_providers", "pool_max_age", "pool_boot_interval"),
    "cli_vms": ("cli_image", "idle_hibernate", "idle_destroy", "prompt_timeout"),
    "capacity": ("vm_memory_budget_mib", "max_vms", "auth_queue_max", "max_prompts_per_user"),
    "webhooks": (
        "webhook_timeout",
        "webhook_backoff_base",
        "webhook_backoff_cap",
        "webhook_retry_window",
        "webhook_retention",
    ),
}
TABLE_OF = {name: table for table, names in TABLES.items() for name in names}


class SettingsError(HearthError):
    """The settings cannot be used: the message names the setting, where it was written
    and what is allowed, never its value (some are secrets)."""


def located(environ: Mapping[str, str] = os.environ) -> tuple[Path, bool]:
    """The configuration file this process reads, and whether it was named (not the default)."""
    named = environ.get(PATH_VARIABLE)
    return (Path(named), True) if named else (DEFAULT_PATH, False)


class SettingsFile(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, on TABLES: each `[table] key` becomes the setting
    `key`; a table or key not in TABLES stops the start with a SettingsError."""

    def __init__(self, settings_cls: type[BaseSettings]):
        self.path, named = located()
        if named and not self.path.exists():
            raise SettingsError(f"no configuration file {self.path} (named by {PATH_VARIABLE})")
        super().__init__(settings_cls, toml_file=self.path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            with file_path.open("rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise SettingsError(f"cannot read {file_path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:  # its message says where, not what was there
            raise SettingsError(f"{file_path} is not TOML: {e}") from None
        return flatten(document, file_path)


def flatten(document: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The settings a parsed file sets, by name; unknown tables and keys refused."""
    values: dict[str, Any] = {}
    for table, keys in document.items():
        if table not in TABLES:
            raise SettingsError(_unknown_table(table, path))
        if not isinstance(keys, dict):
            raise SettingsError(
                f"{path}: {table} must be a table ([{table}]), not a value; "
                f"its keys are {', '.join(TABLES[table])}"
            )
        for key, value in keys.items():
            if key not in TABLES[table]:
                raise SettingsError(_unknown_key(table, key, path))
            values[key] = value
    return values


def _unknown_table(table: str, path: Path) -> str:
    if table in TABLE_OF:
        return f"{path}: {table} is not a table; write it in [{TABLE_OF[table]}]"
    return f"{path}: unknown table [{table}]; the tables are {', '.join(TABLES)}"


def _unknown_key(table: str, key: str, path: Path) -> str:
    message = f"{path}: unknown setting {table}.{key}"
    if key in TABLE_OF:
        return f"{message}; it belongs in [{TABLE_OF[key]}]"
    return f"{message}; [{table}] takes {', '.join(TABLES[table])}"


def invalid(error: ValidationError, environ: Mapping[str, str] = os.environ) -> SettingsError:
    """The settings' validation error as one SettingsError naming each bad setting as it
    was written: the environment variable if one is set, else the file's table.key."""
    path, _ = located(environ)
    problems = []
    for problem in error.errors(include_input=False, include_url=False):
        name = str(problem["loc"][0]) if problem["loc"] else ""
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            where = f"{variable} (environment)"
        elif name in TABLE_OF:
            where = f"{TABLE_OF[name]}.{name} in {path}"
        else:
            where = name
        within = ".".join(str(part) for part in problem["loc"][1:])
        problems.append(f"{where}{f' at {within}' if within else ''}: {problem['msg']}")
    return SettingsError("invalid settings: " + "; ".join(problems))


def render(settings_cls: type[BaseModel]) -> str:
    """The commented configuration file: every setting in its table, commented out at its
    default, under its docstring."""
    fields = settings_cls.model_fields
    lines = [
        "# Hearth's configuration. Every setting is here, commented out at its default;",
        "# uncomment one to change it. The environment overrides this file (HEARTH_<NAME>,",
        "# e.g. HEARTH_MEMORY_MIB for vms.memory_mib). Some settings are secrets",
        "# (master_key, upstream_proxy): keep this file readable by root only.",
    ]
    for table, names in TABLES.items():
        lines += ["", f"[{table}]"]
        for name in names:
            field = fields[name]
            lines += [f"# {line}" for line in textwrap.wrap(field.description or "", 96)]
            lines.append(f"# {name} = {toml_value(field.get_default(call_default_factory=True))}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A setting's value as TOML (JSON's string escapes are TOML's basic strings' too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")
