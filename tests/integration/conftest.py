"""Fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.net.topology import VmNetwork
from hearth.sandbox import sandbox


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # The controller makes its VM network (for the egress listeners) at start: in namespaces
    # of the test's own, removed afterwards.
    with sandbox() as controller:
        settings = Settings(home=tmp_path, netns=f"{controller}-vm", controller_netns=controller)
        try:
            with TestClient(create_app(settings)) as c:
                yield c
        finally:
            VmNetwork.from_settings(settings).teardown()
