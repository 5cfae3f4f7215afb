"""A stand-in for OpenAI's sign-in, token and ChatGPT backend as Codex 0.171.0 uses them
(docs/contracts/codex.md): auth.openai.com's authorize page and token endpoint (the code
exchange and the API-key token exchange, form-encoded; the refresh, JSON), and chatgpt.com's
workspace routing check and streamed /backend-api/codex/responses.

It checks the client id, PKCE (S256), the redirect URI, a code used once, Bearer tokens it
issued, the account header, and rotating refresh tokens (a used one is refused with
refresh_token_reused, as the real service answers).

Run:  python -m tests.standins.openai --host 127.0.0.1 --port 9102 --answer A
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.standins import revoke_route, serve

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
ACCOUNT_ID = "acct-standin-0001"
EMAIL = "tester@example.com"
ACCESS_TTL = 8 * 3600


def jwt(claims: dict) -> str:
    """An unsigned JWT: Codex reads the claims and never checks a signature."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


@dataclass
class State:
    answer: str
    codes: dict[str, dict] = field(default_factory=dict)
    access: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)
    used_refresh: set[str] = field(default_factory=set)
    revoked_refresh: set[str] = field(default_factory=set)

    def revoke_all(self) -> int:
        revoked = len(self.access) + len(self.refresh)
        self.revoked_refresh |= self.refresh
        self.access.clear()
        self.refresh.clear()
        return revoked

    def issue(self) -> dict:
        now = int(time.time())
        auth = {
            "chatgpt_account_id": ACCOUNT_ID,
            "chatgpt_plan_type": "plus",
            "chatgpt_user_id": "user-standin",
            "user_id": "user-standin",
        }
        access = jwt(
            {
                "exp": now + ACCESS_TTL,
                "iat": now,
                "jti": secrets.token_hex(8),
                "https://api.openai.com/auth": auth,
            }
        )
        refresh = f"rt-{secrets.token_urlsafe(24)}"
        self.access.add(access)
        self.refresh.add(refresh)
        id_token = jwt(
            {
                "iss": "https://auth.openai.com",
                "aud": [CLIENT_ID],
                "email": EMAIL,
                "email_verified": True,
                "exp": now + ACCESS_TTL,
                "iat": now,
                "https://api.openai.com/auth": auth,
            }
        )
        return {
            "id_token": id_token,
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL,
        }


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


def app(state: State) -> Starlette:
    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return (
            scheme == "Bearer"
            and token in state.access
            and request.headers.get("chatgpt-account-id") == ACCOUNT_ID
        )

    async def authorize(request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("code_challenge_method") != "S256":
            return HTMLResponse("<h1>Bad request</h1>", 400)
        fields = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in q.items()
        )
        return HTMLResponse(
            "<!doctype html><title>Sign in to Codex (test stand-in)</title>"
            f"<h1>Codex wants to sign in as {EMAIL}</h1>"
            f'<form method="post" action="/oauth/approve">{fields}'
            '<button id="approve" autofocus>Continue</button></form>'
        )

    async def approve(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        code = f"ac_{secrets.token_urlsafe(24)}"
        state.codes[code] = form
        query = urlencode({"code": code, "state": form.get("state", "")})
        return RedirectResponse(f"{form['redirect_uri']}?{query}", 302)

    async def token(request: Request) -> Response:
        raw = await request.body()
        json_body = request.headers.get("content-type", "").startswith("application/json")
        body = json.loads(raw) if json_body else dict(parse_qsl(raw.decode()))
        if body.get("client_id") != CLIENT_ID:
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = body.get("grant_type")
        if grant == "authorization_code":
            auth = state.codes.pop(str(body.get("code")), None)
            verifier = str(body.get("code_verifier", "")).encode()
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            )
            if (
                auth is None
                or challenge != auth.get("code_challenge")
                or body.get("redirect_uri") != auth.get("redirect_uri")
            ):
                return JSONResponse(
                    {"error": "invalid_grant", "error_description": "Invalid authorization code"},
                    400,
                )
            return JSONResponse(state.issue())
        if grant == "urn:ietf:params:oauth:grant-type:token-exchange":
            return JSONResponse({"access_token": f"sk-proj-{secrets.token_urlsafe(16)}"})
        if grant == "refresh_token":
            old = str(body.get("refresh_token"))
            if old in state.used_refresh:
                return _error(
                    401, "refresh_token_reused", "Your refresh token has already been used"
                )
            if old in state.revoked_refresh:
                return _error(
                    401, "refresh_token_invalidated", "Your refresh token has been invalidated"
                )
            if old not in state.refresh:
                return JSONResponse({"error": "invalid_grant"}, 400)
            state.refresh.discard(old)
            state.used_refresh.add(old)
            return JSONResponse(state.issue())
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def accounts_check(request: Request) -> Response:
        if not authorized(request):
            return _error(401, "invalid_token", "unauthorized")
        return JSONResponse(
            {
                "accounts": [
                    {
                        "id": ACCOUNT_ID,
                        "workspace_backend_origin": "https://chatgpt.com",
                        "account_routing_override": "NO_CONSTRAINT",
                    }
                ]
            }
        )

    async def responses(request: Request) -> Response:
        if request.method == "GET":  # the WebSocket attempt: Codex falls back to HTTPS
            return Response("WebSockets are not offered here", 426)
        if not authorized(request):
            return _error(401, "invalid_token", "Your authentication token is invalid")
        raw = await request.body()
        if request.headers.get("content-encoding") == "zstd":
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        json.loads(raw)  # a body Codex sent, or a 400 below
        rid, mid = f"resp_{secrets.token_hex(8)}", f"msg_{secrets.token_hex(8)}"
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": state.answer, "annotations": []}],
        }
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        }
        events = [
            {"type": "response.created", "response": {"id": rid, "status": "in_progress"}},
            {
                "type": "response.output_text.delta",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "delta": state.answer,
            },
            {"type": "response.output_item.done", "output_index": 0, "item": message},
            {
                "type": "response.completed",
                "response": {
                    "id": rid,
                    "object": "response",
                    "status": "completed",
                    "output": [message],
                    "usage": usage,
                },
            },
        ]
        text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return Response(text, media_type="text/event-stream")

    async def not_found(request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, 404)

    return Starlette(
        routes=[
            Route("/oauth/authorize", authorize),
            Route("/oauth/approve", approve, methods=["POST"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", lambda r: JSONResponse({}), methods=["POST"]),
            Route("/backend-api/wham/accounts/check", accounts_check),
            Route("/backend-api/codex/responses", responses, methods=["GET", "POST"]),
            revoke_route(state.revoke_all),
            Route("/{path:path}", not_found, methods=["GET", "POST", "HEAD", "PUT"]),
        ]
    )


if __name__ == "__main__":
    serve(__doc__, lambda answer: app(State(answer)), 9102, "Hello from the OpenAI stand-in.")
