"""A stand-in for Claude's sign-in, token and API services as Claude Code 2.1.332 uses them
(docs/contracts/claude_code.md): claude.com's authorize page, platform.claude.com's token
endpoint, api.anthropic.com's profile, roles and streamed /v1/messages.

It checks what the real services check: the client id, PKCE (S256), the redirect URI and
state of the authorization, a code used once, Bearer tokens it issued and has not revoked,
and refresh tokens that rotate (a used one is refused with invalid_grant).

Run:  python -m tests.standins.anthropic --host 127.0.0.1 --port 9101 --answer A
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.standins import revoke_route, serve

CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
SCOPES = (
    "user:profile user:inference user:sessions:claude_code user:mcp_servers "
    "user:file_upload user:plugins"
)
ACCESS_TTL = 8 * 3600


@dataclass
class Account:
    email: str
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    org_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class State:
    account: Account
    answer: str
    codes: dict[str, dict] = field(default_factory=dict)  # code -> the authorization
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch s)
    refresh: set[str] = field(default_factory=set)  # live refresh tokens
    used_refresh: set[str] = field(default_factory=set)

    def revoke_all(self) -> int:
        revoked = len(self.access) + len(self.refresh)
        self.access.clear()
        self.refresh.clear()
        return revoked

    def issue(self) -> dict:
        access, refresh = (
            f"sk-ant-oat01-{secrets.token_urlsafe(24)}",
            f"sk-ant-ort01-{secrets.token_urlsafe(24)}",
        )
        self.access[access] = time.time() + ACCESS_TTL
        self.refresh.add(refresh)
        a = self.account
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": ACCESS_TTL,
            "scope": SCOPES,
            "token_type": "Bearer",
            "account": {"uuid": a.uuid, "email_address": a.email},
            "organization": {"uuid": a.org_uuid, "name": f"{a.email}'s Organization"},
        }


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status)


def _grant_error(description: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)


def app(state: State) -> Starlette:
    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expires = state.access.get(token) if scheme == "Bearer" else None
        return token if expires and expires > time.time() else None

    async def authorize(request: Request) -> Response:
        q = request.query_params
        problems = [
            f"{k} is {q.get(k)!r}"
            for k, want in (
                ("client_id", CLIENT_ID),
                ("response_type", "code"),
                ("code_challenge_method", "S256"),
            )
            if q.get(k) != want
        ]
        if not q.get("redirect_uri", "").startswith("http://localhost:") or not q.get("state"):
            problems.append("redirect_uri or state missing")
        if problems:
            return HTMLResponse(f"<h1>Bad request</h1><p>{html.escape('; '.join(problems))}", 400)
        fields = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in q.items()
        )
        return HTMLResponse(
            "<!doctype html><title>Authorize Claude Code (test stand-in)</title>"
            f"<h1>Claude Code wants to sign in as {html.escape(state.account.email)}</h1>"
            f'<form method="post" action="/cai/oauth/approve">{fields}'
            '<button id="approve" autofocus>Authorize</button></form>'
        )

    async def approve(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))  # a browser's form post
        code = secrets.token_urlsafe(24)
        state.codes[code] = form
        query = urlencode({"code": code, "state": form.get("state", "")})
        return RedirectResponse(f"{form['redirect_uri']}?{query}", 302)

    async def token(request: Request) -> Response:
        body = await request.json()
        if body.get("client_id") != CLIENT_ID:
            return JSONResponse({"error": "invalid_client"}, 401)
        if body.get("grant_type") == "authorization_code":
            auth = state.codes.pop(str(body.get("code")), None)  # a code works once
            if auth is None:
                return _grant_error("Invalid authorization code")
            challenge = (
                base64.urlsafe_b64encode(
                    hashlib.sha256(str(body.get("code_verifier", "")).encode()).digest()
                )
                .rstrip(b"=")
                .decode()
            )
            if challenge != auth.get("code_challenge"):
                return _grant_error("PKCE verification failed")
            if body.get("redirect_uri") != auth.get("redirect_uri") or body.get(
                "state"
            ) != auth.get("state"):
                return _grant_error("redirect_uri or state does not match the authorization")
            return JSONResponse(state.issue())
        if body.get("grant_type") == "refresh_token":
            old = str(body.get("refresh_token"))
            if old in state.used_refresh:
                return _grant_error("Refresh token not found or invalid")  # reused
            if old not in state.refresh:
                return _grant_error("Refresh token not found or invalid")
            state.refresh.discard(old)
            state.used_refresh.add(old)
            return JSONResponse(state.issue())
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def profile(request: Request) -> Response:
        if bearer(request) is None:
            return _error(401, "authentication_error", "Invalid bearer token")
        a = state.account
        return JSONResponse(
            {
                "account": {
                    "uuid": a.uuid,
                    "email": a.email,
                    "email_address": a.email,
                    "display_name": "Tester",
                    "full_name": "Test User",
                },
                "organization": {
                    "uuid": a.org_uuid,
                    "name": f"{a.email}'s Organization",
                    "organization_type": "claude_max",
                    "rate_limit_tier": "default_claude_max_20x",
                    "billing_type": "stripe_subscription",
                },
            },
            headers={"request-id": f"req_{secrets.token_hex(12)}"},
        )

    async def roles(request: Request) -> Response:
        if bearer(request) is None:
            return _error(401, "authentication_error", "Invalid bearer token")
        return JSONResponse(
            {
                "organization_role": "admin",
                "workspace_role": None,
                "organization_name": f"{state.account.email}'s Organization",
            }
        )

    async def messages(request: Request) -> Response:
        token_ = bearer(request)
        if token_ is None:
            return _error(401, "authentication_error", "Invalid bearer token")
        if "oauth-2025-04-20" not in request.headers.get("anthropic-beta", ""):
            return _error(401, "authentication_error", "OAuth needs the oauth beta")
        body = await request.json()
        message_id, model = f"msg_{secrets.token_hex(12)}", body.get("model", "claude")
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": state.answer}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": 2},
                }
            )
        words = state.answer.split(" ")
        events = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 3, "output_tokens": 1},
                    },
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            *(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": w if i == 0 else " " + w},
                    },
                )
                for i, w in enumerate(words)
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        text = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        return Response(
            text,
            media_type="text/event-stream",
            headers={"request-id": f"req_{secrets.token_hex(12)}"},
        )

    async def not_found(request: Request) -> Response:
        return _error(404, "not_found_error", f"no {request.url.path} here")

    routes = [
        Route("/cai/oauth/authorize", authorize),
        Route("/cai/oauth/approve", approve, methods=["POST"]),
        Route("/v1/oauth/token", token, methods=["POST"]),
        Route("/api/oauth/profile", profile),
        Route("/api/oauth/claude_cli/roles", roles),
        Route("/v1/messages", messages, methods=["POST"]),
        revoke_route(state.revoke_all),
        Route("/{path:path}", not_found, methods=["GET", "POST", "HEAD", "PUT"]),
    ]
    return Starlette(routes=routes)


if __name__ == "__main__":
    # The e-mail is the account's, fixed: the tests check it comes back from the sign-in.
    serve(
        __doc__,
        lambda answer: app(State(Account("tester@example.com"), answer)),
        9101,
        "Hello from the stand-in.",
    )
