"""What the demo identity provider knows: users, its one client, codes and tokens, in memory.

The classes implement Authlib's model mixins, so Authlib's grants do the protocol work and
this module only answers "is this known, whose is it, is it still good". Every mutation
takes one lock: the server is threaded, and codes and refresh tokens are single-use.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, list_to_scope, scope_to_list
from authlib.oidc.core import AuthorizationCodeMixin

CLIENT_ID = "hearth-demo-cli"
CLIENT_NAME = "Hearth demo CLI"
SCOPES = ("openid", "email", "offline_access")
CODE_LIFETIME = 600  # seconds; RFC 6749 §4.1.2 recommends at most ten minutes
ACCESS_TOKEN_LIFETIME = 3600

# RFC 8252 §7.3: a native app's loopback redirect may use any port, so only the host, the
# path and the absence of everything else are fixed. A full match on the whole string
# (rather than parsing and comparing parts) also refuses userinfo ("http://x@127.0.0.1"),
# percent-encoding, backslashes, a query, a fragment, a trailing dot and port-less forms.
_LOOPBACK_REDIRECT = re.compile(r"http://(?:127\.0\.0\.1|localhost):([1-9][0-9]{0,4})/callback")


def is_loopback_redirect(uri: str) -> bool:
    """True for http://127.0.0.1:<port>/callback or http://localhost:<port>/callback."""
    match = _LOOPBACK_REDIRECT.fullmatch(uri)
    return match is not None and int(match.group(1)) <= 65535


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


@dataclass(frozen=True)
class User:
    email: str
    sub: str
    password_digest: bytes = field(repr=False)

    @classmethod
    def create(cls, email: str, password: str, issuer: str) -> User:
        """A user whose `sub` is stable for this issuer and e-mail, and opaque."""
        sub = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}#{email.lower()}"))
        return cls(email=email, sub=sub, password_digest=_digest(password))


@dataclass(frozen=True)
class Client(ClientMixin):
    """The public CLI client: no secret, PKCE instead, loopback redirects on any port."""

    client_id: str = CLIENT_ID
    client_name: str = CLIENT_NAME
    client_metadata: dict[str, str] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        """None: the redirect URI carries the CLI's port, so every request must name it."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return list_to_scope([s for s in scope_to_list(scope) or [] if s in SCOPES])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return is_loopback_redirect(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code: str = field(repr=False)
    client_id: str
    user: User
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass
class Token(TokenMixin):
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    client: Client
    user: User
    scope: str
    issued_at: float
    expires_in: int
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User:
        return self.user

    def get_client(self) -> Client:
        return self.client


class Store:
    """Users, the client, live codes and tokens. Memory only: a demo server's state lasts
    as long as the process, and a restart signs everyone out."""

    def __init__(self, issuer: str, users: dict[str, str]) -> None:
        if not users:
            raise ValueError("the demo identity provider needs at least one user")
        self.client = Client()
        self._users = {
            email.lower(): User.create(email, password, issuer) for email, password in users.items()
        }
        self._codes: dict[str, AuthorizationCode] = {}
        self._by_access: dict[str, Token] = {}
        self._by_refresh: dict[str, Token] = {}
        self._lock = threading.Lock()

    def query_client(self, client_id: str | None) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    def authenticate(self, email: str, password: str) -> User | None:
        """The user with this e-mail and password. The digest is compared in constant time,
        and against a dummy for unknown e-mails, so timing does not tell which were known."""
        user = self._users.get(email.strip().lower())
        expected = user.password_digest if user else _digest("")
        matches = hmac.compare_digest(_digest(password), expected)
        return user if user and matches else None

    def add_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code] = code

    def take_code(self, code: str, client: ClientMixin) -> AuthorizationCode | None:
        """Remove and return a live code issued to `client`. The first token request that
        presents a code consumes it, whatever that request's outcome: a code is single-use
        (RFC 6749 §4.1.2), so a guess at its verifier never gets a second try."""
        with self._lock:
            found = self._codes.pop(code, None)
        if found is None or found.client_id != client.get_client_id():
            return None
        return found if time.time() < found.expires_at else None

    def nonce_in_use(self, nonce: str, client_id: str) -> bool:
        with self._lock:
            return any(c.nonce == nonce and c.client_id == client_id for c in self._codes.values())

    def add_token(self, token: Token) -> None:
        with self._lock:
            self._by_access[token.access_token] = token
            if token.refresh_token:
                self._by_refresh[token.refresh_token] = token

    def token_for_access(self, access_token: str) -> Token | None:
        with self._lock:
            return self._by_access.get(access_token)

    def take_refresh(self, refresh_token: str) -> Token | None:
        """Remove and return the live token this refresh token belongs to: refresh tokens
        rotate, so each is good for exactly one refresh."""
        with self._lock:
            token = self._by_refresh.pop(refresh_token, None)
        return token if token and not token.revoked else None

    def revoke(self, token: Token) -> None:
        with self._lock:
            token.revoked = True
            self._by_access.pop(token.access_token, None)
            if token.refresh_token:
                self._by_refresh.pop(token.refresh_token, None)
