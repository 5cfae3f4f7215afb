"""A stand-in for Google's sign-in, token, userinfo and Code Assist services as Gemini CLI
0.61.0 uses them (docs/contracts/gemini_cli.md): accounts.google.com's authorize page,
oauth2.googleapis.com's token and tokeninfo endpoints (form, with the client secret),
www.googleapis.com's userinfo, cloudcode-pa.googleapis.com's v1internal methods with
the streamed answer, and developers.google.com's pages the CLI's callback sends the browser
to after a sign-in.

It checks the client id and secret, the redirect URI of the authorization, a code used once,
Bearer tokens it issued, and refresh tokens it issued (Google's refresh tokens do not rotate:
a refresh answers a new access token only).

Run:  python -m tests.standins.google --host 127.0.0.1 --port 9103 --answer A
"""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.standins import revoke_route, serve

CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
CLIENT_SECRET = "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"  # shipped in the CLI, not a secret
EMAIL = "tester@example.com"
PROJECT = "standin-project-1"
SCOPE = (
    "https://www.googleapis.com/auth/cloud-platform "
    "https://www.googleapis.com/auth/userinfo.email "
    "https://www.googleapis.com/auth/userinfo.profile"
)


@dataclass
class State:
    answer: str
    codes: dict[str, dict] = field(default_factory=dict)
    access: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)

    def revoke_all(self) -> int:
        revoked = len(self.access) + len(self.refresh)
        self.access.clear()
        self.refresh.clear()
        return revoked

    def issue(self, refresh: bool) -> dict:
        token = f"ya29.{secrets.token_urlsafe(24)}"
        self.access.add(token)
        answer = {"access_token": token, "expires_in": 3599, "scope": SCOPE, "token_type": "Bearer"}
        if refresh:
            answer["refresh_token"] = f"1//{secrets.token_urlsafe(24)}"
            self.refresh.add(answer["refresh_token"])
        return answer


def _unauthenticated() -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "code": 401,
                "status": "UNAUTHENTICATED",
                "message": "Request had invalid authentication credentials.",
            }
        },
        401,
    )


def app(state: State) -> Starlette:
    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and token in state.access

    async def authorize(request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or not q.get("redirect_uri", "").startswith(
            "http://127.0.0.1:"
        ):
            return HTMLResponse("<h1>400. That's an error.</h1>", 400)
        fields = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in q.items()
        )
        return HTMLResponse(
            "<!doctype html><title>Sign in - Google Accounts (test stand-in)</title>"
            f"<h1>Gemini CLI wants to access {EMAIL}</h1>"
            f'<form method="post" action="/o/oauth2/approve">{fields}'
            '<button id="approve" autofocus>Allow</button></form>'
        )

    async def approve(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        code = f"4/{secrets.token_urlsafe(24)}"
        state.codes[code] = form
        query = urlencode({"code": code, "state": form.get("state", ""), "scope": SCOPE})
        return RedirectResponse(f"{form['redirect_uri']}?{query}", 302)

    async def token(request: Request) -> Response:
        body = dict(parse_qsl((await request.body()).decode()))
        if body.get("client_id") != CLIENT_ID or body.get("client_secret") != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client"}, 401)
        if body.get("grant_type") == "authorization_code":
            auth = state.codes.pop(body.get("code", ""), None)
            if auth is None or body.get("redirect_uri") != auth.get("redirect_uri"):
                return JSONResponse(
                    {"error": "invalid_grant", "error_description": "Bad Request"}, 400
                )
            return JSONResponse(state.issue(refresh=True))
        if body.get("grant_type") == "refresh_token":
            if body.get("refresh_token") not in state.refresh:
                return JSONResponse(
                    {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    },
                    400,
                )
            return JSONResponse(state.issue(refresh=False))
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def tokeninfo(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "invalid_token"}, 400)
        return JSONResponse({"scope": SCOPE, "expires_in": "3000", "email": EMAIL})

    async def userinfo(request: Request) -> Response:
        if not authorized(request):
            return _unauthenticated()
        return JSONResponse({"id": "1", "email": EMAIL, "verified_email": True})

    async def code_assist(request: Request) -> Response:
        if not authorized(request):
            return _unauthenticated()
        method = request.path_params["method"]
        body = json.loads(await request.body() or b"{}")
        if method == "loadCodeAssist":
            return JSONResponse(
                {
                    "currentTier": {"id": "free-tier", "name": "Gemini Code Assist"},
                    "allowedTiers": [{"id": "free-tier", "isDefault": True}],
                    "cloudaicompanionProject": PROJECT,
                }
            )
        if method == "retrieveUserQuota":
            return JSONResponse({"buckets": []})
        if method == "listExperiments":
            return JSONResponse({"flags": [], "experimentIds": []})
        if method == "generateContent":  # the model router asks for JSON by its schema
            schema = (
                body.get("request", {}).get("generationConfig", {}).get("responseJsonSchema", {})
            )
            props = schema.get("properties", {})
            choice = (
                {"complexity_reasoning": "simple", "complexity_score": 5}
                if "complexity_score" in props
                else {"reasoning": "simple", "model_choice": "flash"}
            )
            return JSONResponse(
                {
                    "response": {
                        "candidates": [
                            {
                                "content": {
                                    "role": "model",
                                    "parts": [{"text": json.dumps(choice)}],
                                },
                                "finishReason": "STOP",
                            }
                        ]
                    },
                    "traceId": secrets.token_hex(8),
                }
            )
        if method == "streamGenerateContent":
            words = state.answer.split(" ")
            chunks = [
                {
                    "response": {
                        "candidates": [
                            {
                                "content": {
                                    "role": "model",
                                    "parts": [{"text": w if i == 0 else " " + w}],
                                },
                                **({"finishReason": "STOP"} if i == len(words) - 1 else {}),
                            }
                        ],
                        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5 + i},
                    },
                    "traceId": "trace-standin",
                }
                for i, w in enumerate(words)
            ]
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
            return Response(text, media_type="text/event-stream")
        return JSONResponse({})  # recordCodeAssistMetrics and the like

    async def signed_in(request: Request) -> Response:
        """developers.google.com's pages the CLI's callback redirects the browser to."""
        outcome = {"success": "successful", "failure": "failed"}.get(request.path_params["outcome"])
        if outcome is None:
            return await not_found(request)
        return HTMLResponse(
            f"<!doctype html><title>Gemini Code Assist: authentication {outcome} "
            f"(test stand-in)</title><h1>Authentication {outcome}</h1>"
        )

    async def not_found(request: Request) -> Response:
        return JSONResponse({"error": {"code": 404, "status": "NOT_FOUND"}}, 404)

    return Starlette(
        routes=[
            Route("/o/oauth2/v2/auth", authorize),
            Route("/o/oauth2/approve", approve, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
            Route("/tokeninfo", tokeninfo, methods=["POST", "GET"]),
            Route("/oauth2/v2/userinfo", userinfo),
            Route("/v1internal:{method}", code_assist, methods=["POST"]),
            Route("/gemini-code-assist/auth_{outcome:str}_gemini", signed_in),
            revoke_route(state.revoke_all),
            Route("/{path:path}", not_found, methods=["GET", "POST", "HEAD", "PUT"]),
        ]
    )


if __name__ == "__main__":
    serve(__doc__, lambda answer: app(State(answer)), 9103, "Hello from the Google stand-in.")
