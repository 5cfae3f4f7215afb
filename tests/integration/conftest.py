"""Fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.core.runtime import Controller
from hearth.demo.sandbox import sandbox
from hearth.net.topology import VmNetwork
from tests.served import serve_app


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


@dataclass
class Served:
    url: str
    controller: Controller


@contextmanager
def serve(home: Path) -> Iterator[Served]:
    """The controller over real HTTP on 127.0.0.1 (uvicorn on a thread of this process), for
    clients that are not in-process (a browser, schemathesis); its VM network in namespaces
    of the test's own."""
    with sandbox() as ns:
        settings = Settings(home=home, netns=f"{ns}-vm", controller_netns=ns)
        app = create_app(settings)
        try:
            with serve_app(app) as url:
                yield Served(url, app.state.controller)
        finally:
            VmNetwork.from_settings(settings).teardown()
