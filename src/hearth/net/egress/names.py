"""Host names and name patterns as policies hold them: `claude.com` is that name only,
`*.anthropic.com` every name below anthropic.com (not the apex itself)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalize(name: str) -> str:
    """The name lower-cased without its final dot; ValueError if it is not a DNS name."""
    if not isinstance(name, str):
        raise ValueError(f"a host name must be a string, not {type(name).__name__}")
    folded = name.strip().lower().removesuffix(".")
    labels = folded.split(".")
    if not folded or len(folded) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{name[:80]!r} is not a host name")
    if labels[-1].isdigit():
        raise ValueError(f"{name[:80]!r} is an address, not a host name")
    return folded


def normalize_pattern(pattern: str) -> str:
    """A name, or `*.` and a name; ValueError naming what is wrong otherwise."""
    if isinstance(pattern, str) and pattern.startswith("*."):
        return "*." + normalize(pattern[2:])
    return normalize(pattern)


def matches(pattern: str, name: str) -> bool:
    """Whether a normalised `name` falls under a normalised `pattern`."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def first_match(patterns: Iterable[str], name: str) -> str | None:
    return next((p for p in patterns if matches(p, name)), None)
