"""The core rig (tests/core_rig.py) for the core's unit tests: no root, no images, no VMs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core_rig import Rig, build_rig


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with build_rig(tmp_path, monkeypatch) as built:
        yield built
