"""Hearth's errors (hearth.errors): one base per package, each with an HTTP status the API
answers with, all of them in docs/errors.md."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import hearth
from hearth.core import CoreError
from hearth.errors import HearthError
from hearth.image.chroot import BuildError
from hearth.net import NetworkError
from hearth.providers.base import ProviderError
from hearth.settings_file import SettingsError
from hearth.store import StoreError
from hearth.vmm.base import VmmError
from hearth.waiting import Timeout

BASES = (
    CoreError,
    StoreError,
    NetworkError,
    VmmError,
    BuildError,
    ProviderError,
    Timeout,
    SettingsError,
)
TABLE = (Path(__file__).parents[2] / "docs/errors.md").read_text()


def every_error() -> list[type[HearthError]]:
    """Every HearthError class in Hearth's modules (the guest's are standard library only)."""
    for module in pkgutil.walk_packages(hearth.__path__, "hearth."):
        if not module.name.startswith("hearth.guest") and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, todo = [], [HearthError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return sorted(set(found), key=lambda c: c.__name__)


@pytest.mark.parametrize("error", every_error(), ids=lambda c: c.__name__)
def test_each_error_has_one_package_base_a_status_and_a_row(error: type[HearthError]) -> None:
    assert error.__module__.startswith("hearth.")
    bases = [base for base in BASES if issubclass(error, base)]
    assert len(bases) == 1, f"{error.__name__} is under {bases}"
    assert 400 <= error.http_status < 600
    assert re.fullmatch(r"[a-z][a-z0-9_]*", error.code), error.code
    if error not in BASES and error.__name__.lstrip("_")[0].isupper():
        parent = error.__mro__[1].__name__  # a family's members may share their parent's row
        assert error.__name__ in TABLE or parent in TABLE, f"{error.__name__}: docs/errors.md"


def test_the_statuses_say_what_the_caller_did() -> None:
    from hearth.core.cli_vms import ProviderUnreachable, UnknownUser
    from hearth.core.prompts import NoCredentials
    from hearth.core.stopping import ControllerStopping
    from hearth.net.ippool import PoolExhausted
    from hearth.providers import UnknownProviderError
    from hearth.store.credentials import CredentialNotFound, CredentialStale

    assert {
        e.__name__: e.http_status
        for e in (
            UnknownUser,
            NoCredentials,
            CredentialNotFound,
            CredentialStale,
            ProviderUnreachable,
            PoolExhausted,
            UnknownProviderError,
            Timeout,
            ControllerStopping,
        )
    } == {
        "UnknownUser": 404,
        "NoCredentials": 409,
        "CredentialNotFound": 404,
        "CredentialStale": 409,
        "ProviderUnreachable": 502,
        "PoolExhausted": 503,
        "UnknownProviderError": 400,
        "Timeout": 504,
        "ControllerStopping": 503,
    }


def test_each_error_is_named_for_programs_by_its_class_unless_it_names_itself() -> None:
    from hearth.core.capacity import NoCapacity
    from hearth.core.prompts import NoCredentials
    from hearth.providers import UnknownProviderError

    assert [e.code for e in (NoCredentials, NoCapacity, UnknownProviderError, Timeout)] == [
        "no_credentials",
        "no_capacity",
        "unknown_provider_error",
        "timeout",
    ]

    class OwnName(HearthError):
        code = "own"

    class Inherits(OwnName):
        pass

    assert (HearthError.code, OwnName.code, Inherits.code) == ("hearth_error", "own", "inherits")
