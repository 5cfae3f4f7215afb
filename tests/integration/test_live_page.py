"""The live view's routes under uvicorn on 127.0.0.1, its WebSocket bridged to a real Xtigervnc.

The only stand-in is `resolve`, which takes the place of the session store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hearth.api.live import NOT_FOUND, live_router
from hearth.core.auth_sessions import LiveTarget, LiveView
from hearth.web.novnc import NoVncNotFound, find_novnc
from tests.integration.test_vnc_proxy import (
    HEIGHT,
    LOOPBACK,
    WIDTH,
    RfbViewer,
    VncServer,
    running_xvnc,
    serving,
)

SESSION = "sess-1"
TOKEN = "tok-good-0123456789"
PROVIDER = "Claude"


@pytest.fixture(scope="module")
def xvnc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VncServer]:
    with running_xvnc(tmp_path_factory.mktemp("xvnc")) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(xvnc: VncServer) -> Iterator[str]:
    """The live view's routes, with a resolve that knows one session and its token."""
    view = LiveView(PROVIDER, LiveTarget(LOOPBACK, xvnc.port, xvnc.password), "awaiting_user")

    async def resolve(session_id: str, token: str) -> LiveView | None:
        return view if (session_id, token) == (SESSION, TOKEN) else None

    app = FastAPI()
    app.include_router(live_router(resolve))
    with serving(app) as port:
        yield f"http://{LOOPBACK}:{port}"


def test_connect_page_holds_the_viewer_and_no_secret(base_url: str, xvnc: VncServer) -> None:
    response = httpx.get(f"{base_url}/connect/{SESSION}", params={"token": TOKEN})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    assert '<script type="module" src="/static/connect.js"></script>' in page
    assert f"Sign in to {PROVIDER}" in page
    assert xvnc.password not in page
    assert str(xvnc.port) not in page
    # The token goes into the two URLs the page's script uses, and nowhere else.
    assert f'data-vnc-path="/connect/{SESSION}/vnc?token={TOKEN}"' in page
    assert f'data-events-path="/api/auth/session/{SESSION}/events?token={TOKEN}"' in page
    assert page.count(TOKEN) == 2
    assert not re.search(r"https?://(?!www\.w3\.org)", page), "nothing from elsewhere"
    # A late visitor sees where the session is at once, before the event stream replays.
    assert 'data-status="awaiting_user"' in page and "Status: awaiting user" in page


@pytest.mark.parametrize(
    "path, params",
    [
        (f"/connect/{SESSION}", {"token": "bad"}),
        ("/connect/other-session", {"token": TOKEN}),
        (f"/connect/{SESSION}", {}),
    ],
)
def test_unknown_session_or_token_is_404_json(
    base_url: str, path: str, params: dict[str, str]
) -> None:
    response = httpx.get(f"{base_url}{path}", params=params)
    assert response.status_code == 404
    assert response.json() == {"detail": NOT_FOUND}


def test_novnc_and_page_assets_are_served(base_url: str) -> None:
    rfb = httpx.get(f"{base_url}/novnc/core/rfb.js")
    assert rfb.status_code == 200
    assert "javascript" in rfb.headers["content-type"]
    assert "export default class RFB" in rfb.text
    script = httpx.get(f"{base_url}/static/connect.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "import RFB from '/novnc/core/rfb.js';" in script.text
    style = httpx.get(f"{base_url}/static/connect.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


def test_static_routes_stay_inside_their_folders(base_url: str) -> None:
    for path in ("/novnc/core/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2F..%2Fconfig.py"):
        response = httpx.get(f"{base_url}{path}")
        assert response.status_code == 404
        assert "root:" not in response.text
    assert httpx.head(f"{base_url}/novnc/core/rfb.js").status_code == 200


def test_websocket_bridges_to_the_vm(base_url: str) -> None:
    url = f"{base_url.replace('http', 'ws', 1)}/connect/{SESSION}/vnc?token={TOKEN}"
    with connect(url, subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        width, height, name, _ = RfbViewer(ws).handshake()
    assert (width, height) == (WIDTH, HEIGHT)
    assert name


def test_websocket_with_a_bad_token_is_refused(base_url: str) -> None:
    url = f"{base_url.replace('http', 'ws', 1)}/connect/{SESSION}/vnc?token=bad"
    with pytest.raises(InvalidStatus) as refused, connect(url):
        pass
    assert refused.value.response.status_code == 403


def test_find_novnc_takes_the_first_root_with_rfb_js(tmp_path: Path) -> None:
    empty, npm = tmp_path / "debian", tmp_path / "npm"
    (npm / "core").mkdir(parents=True)
    (npm / "core" / "rfb.js").write_text("export default class RFB {}\n")
    assert find_novnc([empty, npm]) == npm
    with pytest.raises(NoVncNotFound, match="apt-get install novnc.*npm install --prefix"):
        find_novnc([empty])
