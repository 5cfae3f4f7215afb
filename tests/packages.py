"""Skips for a missing Debian package, all in one form, so that where every package should
be installed (scripts/test.sh sets STRICT_ENV) such a skip fails the suite instead: a
missing install step in scripts/bootstrap.sh can never hide as a skip."""

from __future__ import annotations

PREFIX = "needs the Debian package"
STRICT_ENV = "HEARTH_TEST_NO_PACKAGE_SKIPS"


def missing(packages: str, what: str = "") -> str:
    """The skip reason for tests that need `packages` (what they provide, if not obvious)."""
    return f"{PREFIX} {packages}" + (f" ({what})" if what else "")
