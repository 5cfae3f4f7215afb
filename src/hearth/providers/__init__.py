"""One ProviderSpec per CLI Hearth signs in, by name."""

from __future__ import annotations

from hearth.demo.provider import SPEC as DEMO_SPEC  # the product's one import from the demo

from . import claude_code, codex, gemini_cli
from .base import ProviderSpec, UnknownProviderError

SPECS: dict[str, ProviderSpec] = {
    spec.name: spec for spec in (claude_code.SPEC, codex.SPEC, gemini_cli.SPEC, DEMO_SPEC)
}


def get(name: str) -> ProviderSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UnknownProviderError(
            f"unknown provider {name!r}; known providers: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    return sorted(SPECS)


__all__ = ["ProviderSpec", "UnknownProviderError", "get", "names"]
