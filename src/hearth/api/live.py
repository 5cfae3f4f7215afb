"""The live view: the page where a user watches and drives a browser VM, and its VNC socket.

Which VM a session's token opens is the session store's business, reached through the
`resolve` callable; this module serves the page, noVNC's files, and the WebSocket that
`vnc_proxy.bridge` connects to the VM. The token only travels inside the page's two URLs
(VNC WebSocket and status stream); the VNC password never reaches the browser.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from hearth.api.vnc_proxy import bridge
from hearth.core.auth_sessions import LiveView
from hearth.web.novnc import find_novnc

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
NOT_FOUND = "unknown session or invalid token"
CLOSE_POLICY_VIOLATION = 1008
# The page's URL carries the token: keep it out of caches and other sites' Referer headers,
# and let the page load nothing that Hearth does not serve itself.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


Resolve = Callable[[str, str], Awaitable[LiveView | None]]
CLOSE_TRY_AGAIN = 1013  # the VM is not ready yet; the page reconnects on the next status


def _session_paths(session_id: str, token: str) -> dict[str, str]:
    """The page's VNC WebSocket and status-stream paths, the only places the token goes."""
    session = quote(session_id, safe="")
    query = urlencode({"token": token})
    return {
        "vnc_path": f"/connect/{session}/vnc?{query}",
        "events_path": f"/api/auth/session/{session}/events?{query}",
    }


def live_router(resolve: Resolve) -> APIRouter:
    """Routes for the live view; `resolve(session_id, token)` is None for a bad token, and
    its `target` is None until the session's browser VM is ready.

    Raises NoVncNotFound at once when noVNC is not installed, rather than on first view.
    """
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    router = APIRouter()

    @router.get("/connect/{session_id}", response_class=HTMLResponse, include_in_schema=False)
    async def connect_page(request: Request, session_id: str, token: str = "") -> Response:
        view = await resolve(session_id, token) if token else None
        if view is None:
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        context = {
            "provider": view.provider,
            "status": view.status,
            "queue_position": view.queue_position,
            **_session_paths(session_id, token),
        }
        return templates.TemplateResponse(request, "connect.html", context, headers=PAGE_HEADERS)

    @router.websocket("/connect/{session_id}/vnc")
    async def connect_vnc(websocket: WebSocket, session_id: str, token: str = "") -> None:
        view = await resolve(session_id, token) if token else None
        if view is None:
            await websocket.close(CLOSE_POLICY_VIOLATION, NOT_FOUND)
            return
        if view.target is None:
            await websocket.close(CLOSE_TRY_AGAIN, "the browser VM is not ready yet")
            return
        target = view.target
        binary = "binary" in websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="binary" if binary else None)
        await bridge(websocket, target.host, target.port, target.password)

    _serve_files(router, "/novnc", find_novnc())
    _serve_files(router, "/static", WEB_DIR / "static")
    return router


def _serve_files(router: APIRouter, prefix: str, directory: Path) -> None:
    """Serve `directory` under `prefix` with StaticFiles, through a route, not a mount.

    FastAPI's include_router drops mounts on a router in many versions; a route survives.
    """
    files = StaticFiles(directory=directory)

    async def serve(path: str, request: Request) -> Response:
        return await files.get_response(path, request.scope)

    router.add_api_route(
        f"{prefix}/{{path:path}}",
        serve,
        methods=["GET", "HEAD"],
        name=prefix.strip("/"),
        include_in_schema=False,
    )
