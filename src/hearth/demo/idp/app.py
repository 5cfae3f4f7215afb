"""The demo identity provider's Flask app: Authlib's OAuth 2.0 / OpenID Connect server with
an HTML login form in front of it.

Authlib does the protocol: the authorization code grant with PKCE, the refresh token grant,
the id_token, bearer token checks at /userinfo. This module supplies the policy Authlib
leaves to its user: PKCE S256 required of the public client, loopback redirects on any
port (RFC 8252 §7.3), single-use codes and rotating refresh tokens (models.Store), and the
pages a person sees in the browser VM.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from flask import Flask, Response, jsonify, render_template_string, request
from joserfc.jwk import RSAKey

from .models import (
    ACCESS_TOKEN_LIFETIME,
    CODE_LIFETIME,
    SCOPES,
    AuthorizationCode,
    Store,
    Token,
    User,
)

log = logging.getLogger("hearth.demo.idp")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · Hearth demo</title>
<style>
  body { margin: 0; min-height: 100vh; display: grid; place-items: center;
         background: #f4f1ec; color: #1f1d1a; font: 16px/1.5 system-ui, sans-serif; }
  main { width: min(22rem, 90vw); padding: 2rem; background: #fff; border-radius: 12px;
         box-shadow: 0 2px 12px rgb(0 0 0 / 10%); }
  h1 { margin: 0 0 .25rem; font-size: 1.5rem; }
  p { margin: 0 0 1.25rem; color: #5b564f; }
  label { display: block; margin: .75rem 0 .25rem; font-weight: 600; }
  input { box-sizing: border-box; width: 100%; padding: .6rem; font: inherit;
          border: 1px solid #c9c2b8; border-radius: 6px; }
  button { width: 100%; margin-top: 1.25rem; padding: .7rem; font: inherit; font-weight: 600;
           color: #fff; background: #c2410c; border: 0; border-radius: 6px; cursor: pointer; }
  .error { padding: .6rem .75rem; color: #7f1d1d; background: #fee2e2; border-radius: 6px; }
</style>
</head>
<body>
<main>
{% if form %}
  <h1>Sign in</h1>
  <p>to continue to <strong>{{ client_name }}</strong></p>
  {% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
  <form method="post" action="{{ action }}">
    <label for="username">E-mail</label>
    <input id="username" name="username" type="email" value="{{ username }}"
           autocomplete="username" required autofocus>
    <label for="password">Password</label>
    <input id="password" name="password" type="password"
           autocomplete="current-password" required>
    <button type="submit">Sign in</button>
  </form>
{% else %}
  <h1>{{ title }}</h1>
  <p class="error" role="alert">{{ error }}</p>
{% endif %}
</main>
</body>
</html>
"""

# Pages and token responses must not be cached or framed; the CSP allows the page's own
# inline style and nothing else (no form-action: browsers apply it to the redirect that
# follows the form, and that goes to the CLI's loopback port).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def check_issuer(issuer: str) -> str:
    """The issuer as id_tokens carry it: an http(s) origin, since every route is at the root."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"issuer {issuer!r} is not an http:// or https:// URL")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"issuer {issuer!r} must be scheme://host[:port] alone")
    return issuer


def user_claims(user: User, scope: str) -> UserInfo:
    return UserInfo(sub=user.sub, email=user.email, email_verified=True).filter(scope)


def provider_metadata(issuer: str) -> dict[str, Any]:
    """The discovery document (OpenID Connect Discovery 1.0 §3)."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "email", "email_verified", "iss", "aud", "exp", "iat"],
    }


class DemoServer(AuthorizationServer):
    """Authlib's Flask authorization server, holding what the grants look up."""

    def __init__(self, app: Flask, store: Store) -> None:
        self.store = store
        super().__init__(app, query_client=store.query_client, save_token=self._save_token)

    def _save_token(self, token: dict[str, Any], req: OAuth2Request) -> None:
        self.store.add_token(
            Token(
                access_token=token["access_token"],
                refresh_token=token.get("refresh_token"),
                client=req.client,
                user=req.user,
                scope=token.get("scope", ""),
                issued_at=time.time(),
                expires_in=token["expires_in"],
            )
        )


class CodeGrant(grants.AuthorizationCodeGrant):
    """The authorization code grant for a public client (no secret: PKCE proves the caller)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    server: DemoServer

    @staticmethod
    def validate_authorization_redirect_uri(req: OAuth2Request, client: ClientMixin) -> str:
        """Authlib's own check echoes the URI in the error, and raises ValueError (a 500)
        when the URI holds characters an error description may not; this never echoes it."""
        redirect_uri = req.payload.redirect_uri
        if not redirect_uri or not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError(
                "'redirect_uri' must be http://127.0.0.1:<port>/callback "
                "or http://localhost:<port>/callback"
            )
        return redirect_uri

    def save_authorization_code(self, code: str, req: OAuth2Request) -> None:
        data = req.payload.data
        self.server.store.add_code(
            AuthorizationCode(
                code=code,
                client_id=req.client.get_client_id(),
                user=req.user,
                redirect_uri=req.payload.redirect_uri,
                scope=req.scope,
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                nonce=data.get("nonce"),
                auth_time=int(time.time()),
                expires_at=time.time() + CODE_LIFETIME,
            )
        )

    def query_authorization_code(self, code: str, client: ClientMixin) -> AuthorizationCode | None:
        return self.server.store.take_code(code, client)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: query_authorization_code already consumed the code."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        return authorization_code.user


class RefreshGrant(grants.RefreshTokenGrant):
    """Refresh with rotation: each refresh returns a new refresh token and revokes the old
    pair, as the real providers Hearth signs into do (one live copy of a credential)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: DemoServer

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        return self.server.store.take_refresh(refresh_token)

    def authenticate_user(self, refresh_token: Token) -> User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: Token) -> None:
        self.server.store.revoke(refresh_token)


class RequireS256(CodeChallenge):
    """PKCE as a public client must use it: a S256 challenge on every authorization request,
    and a missing verifier refused as invalid_grant (the code is bound to a challenge it
    does not answer), as a wrong one is (RFC 7636 §4.6)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' (S256)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: CodeGrant, result: None) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidGrantError("Missing 'code_verifier' for this PKCE-bound code")
        super().validate_code_verifier(grant, result)


class IdToken(OpenIDCode):
    """Signs the id_token RS256 with the server's key, naming the key by its kid."""

    def __init__(self, store: Store, key: RSAKey, issuer: str) -> None:
        super().__init__(require_nonce=False)
        self.store = store
        self.key = key
        self.issuer = issuer

    def exists_nonce(self, nonce: str, req: OAuth2Request) -> bool:
        return self.store.nonce_in_use(nonce, req.payload.client_id)

    def resolve_client_private_key(self, client: ClientMixin) -> RSAKey:
        return self.key

    def get_client_algorithm(self, client: ClientMixin) -> str:
        return "RS256"

    def get_encode_header(self, client: ClientMixin) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.key.kid}

    def get_client_claims(self, client: ClientMixin) -> dict[str, Any]:
        return {"iss": self.issuer, "aud": client.get_client_id()}

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return user_claims(user, scope)


class AccessTokens(BearerTokenValidator):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.store.token_for_access(token_string)


class UserInfoRoute(UserInfoEndpoint):
    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return user_claims(user, scope)


def _page(status: int, **context: Any) -> Response:
    context.setdefault("form", False)
    return Response(render_template_string(PAGE, **context), status, mimetype="text/html")


def create_app(issuer: str, users: dict[str, str], token_ttl: int = ACCESS_TOKEN_LIFETIME) -> Flask:
    """The provider for `issuer` with `users` (e-mail -> password) and the hearth-demo-cli
    client, with a signing key generated now (so it lives as long as the app). Access tokens
    last `token_ttl` seconds: a short one lets a demo show a CLI refreshing its token."""
    issuer = check_issuer(issuer)
    if token_ttl <= 0:
        raise ValueError(f"token lifetime {token_ttl} is not a positive number of seconds")
    # Authlib logs whole token responses at DEBUG ("Issue token ..."); they never get out.
    logging.getLogger("authlib").setLevel(logging.INFO)

    app = Flask(__name__)
    app.config.update(
        OAUTH2_REFRESH_TOKEN_GENERATOR=True,
        OAUTH2_TOKEN_EXPIRES_IN={
            "authorization_code": token_ttl,
            "refresh_token": token_ttl,
        },
        OAUTH2_SCOPES_SUPPORTED=list(SCOPES),
    )
    store = Store(issuer, users)
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    jwks = {"keys": [key.as_dict(private=False)]}
    metadata = provider_metadata(issuer)

    server = DemoServer(app, store)
    server.register_grant(CodeGrant, [RequireS256(), IdToken(store, key, issuer)])
    server.register_grant(RefreshGrant)
    protector = ResourceProtector()
    protector.register_token_validator(AccessTokens(store))
    server.register_endpoint(UserInfoRoute(resource_protector=protector))

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        return jsonify(metadata)

    @app.get("/jwks")
    def jwks_route() -> Response:
        return jsonify(jwks)

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            if error.redirect_uri:  # the client and its redirect are known: tell the client
                return server.handle_error_response(request, error)
            return _page(400, title="Cannot sign in", error=error.description or error.error)
        form = {
            "form": True,
            "title": "Sign in",
            "client_name": grant.client.client_name,
            "action": request.full_path,
            "username": request.form.get("username", ""),
        }
        if request.method == "GET":
            return _page(200, **form)
        user = store.authenticate(form["username"], request.form.get("password", ""))
        if user is None:
            log.info("sign-in refused: wrong e-mail or password")
            return _page(200, **form, error="Wrong e-mail or password.")
        log.info("signed in %s", user.email)
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def token() -> Response:
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Response:
        return server.create_endpoint_response("userinfo")

    return app
