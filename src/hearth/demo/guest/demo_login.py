"""The `demo` provider's login command: a small OAuth 2.0 / OpenID Connect native client that
signs in the way real CLIs do, so Hearth's login path is exercised end to end.

It reads the provider's discovery document, listens on 127.0.0.1 for the redirect (RFC 8252
§7.3), prints the authorize URL (and runs $BROWSER with it, without waiting), checks the
state, redeems the code with its PKCE verifier, asks /userinfo who signed in, and writes the
credential file atomically, mode 0600. `Login successful: <email>` on stdout is the success
marker; any failure is one line on stderr and a non-zero exit. Tokens are never printed.

Standard library only: it runs inside the VM with Debian's python3.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

CLIENT_ID = "hearth-demo-cli"
DEFAULT_OUT = "~/.hearth-demo/credentials.json"
SCOPE = "openid email offline_access"
HTTP_TIMEOUT = 30.0
SHUTDOWN_POLL = 0.05  # seconds between the callback server's checks for shutdown()
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font: 16px/1.5 system-ui, sans-serif; margin: 4rem auto; max-width: 32rem">
<h1>{title}</h1><p>{message}</p></body></html>
"""

# Proxies from the environment are ignored: the provider is reached directly, and the
# loopback callback must never be sent anywhere else.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LoginError(Exception):
    """Ends the login with a one-line message that is safe to print (no tokens in it)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def http_json(url: str, form: dict[str, str] | None = None, token: str | None = None) -> Any:
    """GET (or POST `form` to) `url` and return its JSON body; an OAuth error response
    becomes a LoginError naming the error code."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    where = urlsplit(url)._replace(query="", fragment="").geturl()
    try:
        with _opener.open(req, timeout=HTTP_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise LoginError(f"{where} answered {e.code}: {_oauth_error(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LoginError(f"cannot reach {where}: {reason}") from None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoginError(f"{where} did not answer with JSON") from None


def _oauth_error(body: bytes) -> str:
    try:
        data = json.loads(body)
        error = str(data["error"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return "no OAuth error in the response"
    description = data.get("error_description")
    return f"{error} ({description})" if description else error


def discover(issuer: str) -> dict[str, Any]:
    """The provider's metadata, checked to be for `issuer` and to have what we use."""
    issuer = issuer.rstrip("/")
    meta = http_json(f"{issuer}/.well-known/openid-configuration")
    if not isinstance(meta, dict) or meta.get("issuer") != issuer:
        raise LoginError(f"{issuer}'s discovery document names another issuer")
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        if not isinstance(meta.get(name), str):
            raise LoginError(f"the discovery document has no {name}")
    return meta


@dataclass
class Callback:
    """What the browser brought back to /callback: a code, or why there is none."""

    code: str | None = None
    error: str | None = None


class CallbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: str) -> None:
        super().__init__(("127.0.0.1", port), CallbackHandler)
        self.state = state
        self.result: Callback | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address."""
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def record(self, result: Callback) -> Callback:
        """Keep the first result only, and return the one kept: a reload changes nothing."""
        with self._lock:
            if self.result is None:
                self.result = result
            return self.result


class CallbackHandler(BaseHTTPRequestHandler):
    server: CallbackServer
    server_version = "hearth-demo-login"
    sys_version = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/callback":
            self._answer(HTTPStatus.NOT_FOUND, "Not found", "This is not the sign-in callback.")
            return
        result = self.server.record(self._read(parse_qs(url.query)))
        if result.code:
            self._answer(HTTPStatus.OK, "Signed in", "Signed in — you can close this window.")
        else:
            self._answer(
                HTTPStatus.BAD_REQUEST, "Sign-in failed", "Sign-in failed — see the terminal."
            )
        # Only now, with the page sent: the login may exit as soon as it sees `done`.
        self.server.done.set()

    def _read(self, query: dict[str, list[str]]) -> Callback:
        params = {name: values[0] for name, values in query.items()}
        state = params.get("state", "").encode()
        if not secrets.compare_digest(state, self.server.state.encode()):
            return Callback(error="the callback's state does not match this login")
        if "error" in params:
            refusal = _printable(params["error"])
            return Callback(error=f"the provider refused the sign-in: {refusal}")
        if params.get("code"):
            return Callback(code=params["code"])
        return Callback(error="the callback carried neither a code nor an error")

    def _answer(self, status: HTTPStatus, title: str, message: str) -> None:
        body = PAGE.format(title=title, message=message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default logs the request line, and the callback's holds the code."""


def _printable(text: str, limit: int = 100) -> str:
    """`text` cut short and without control characters, fit for one line on a terminal."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def open_browser(url: str) -> None:
    """Run $BROWSER with the URL (as `%s` in it, or appended) and do not wait for it."""
    try:
        command = shlex.split(os.environ.get("BROWSER", ""))
        if not command:
            return
        if any("%s" in part for part in command):
            command = [part.replace("%s", url) for part in command]
        else:
            command.append(url)
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except (OSError, ValueError) as e:
        print(f"demo-login: cannot run $BROWSER ({e}); open the URL yourself", file=sys.stderr)


def _claims(id_token: str) -> dict[str, Any]:
    """The id_token's claims. Its signature is not checked here: the token came straight
    from the token endpoint we called (OpenID Connect Core §3.1.3.7), and the standard
    library has no RSA; the claims are still checked against what we asked for."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise LoginError("the id_token is not a JWT") from None
    if not isinstance(claims, dict):
        raise LoginError("the id_token's payload is not a JSON object")
    return claims


def check_id_token(id_token: str, issuer: str, client_id: str, nonce: str) -> dict[str, Any]:
    claims = _claims(id_token)
    audience = claims.get("aud")
    if claims.get("iss") != issuer:
        raise LoginError("the id_token was issued by someone else")
    if audience != client_id and not (isinstance(audience, list) and client_id in audience):
        raise LoginError("the id_token is not for this client")
    if claims.get("nonce") != nonce:
        raise LoginError("the id_token's nonce does not match this login")
    return claims


def write_credentials(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path`, mode 0600, atomically (a reader sees the old file or
    the whole new one); a directory created for it is 0700.

    Not hearth.guest.fileio's write_private: this program stands in for a provider's own
    CLI and runs as one file on its own (its tests run it with `python -I`), importing
    nothing of the agent's."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        path.parent.chmod(0o700)  # mkdir's mode is masked by the umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def login(args: argparse.Namespace) -> str:
    """Run the whole sign-in; return the signed-in e-mail."""
    issuer = args.issuer.rstrip("/")
    meta = discover(issuer)
    verifier = _b64url(secrets.token_bytes(32))
    challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    try:
        server = CallbackServer(args.port, state)
    except OSError as e:
        raise LoginError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    url = (
        meta["authorization_endpoint"]
        + "?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": args.client_id,
                "redirect_uri": redirect_uri,
                "scope": SCOPE,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )
    thread = threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), daemon=True)
    thread.start()
    try:
        print(f"Open this URL to sign in: {url}", flush=True)
        open_browser(url)
        if not server.done.wait(args.timeout):
            raise LoginError(f"no sign-in within {args.timeout:g}s")
    finally:
        server.shutdown()
        server.server_close()
    result = server.result
    if result is None or result.code is None:
        raise LoginError(result.error if result and result.error else "no code came back")

    token = http_json(
        meta["token_endpoint"],
        form={
            "grant_type": "authorization_code",
            "code": result.code,
            "redirect_uri": redirect_uri,
            "client_id": args.client_id,
            "code_verifier": verifier,
        },
    )
    obtained = int(time.time())
    if not isinstance(token, dict) or not all(
        isinstance(token.get(k), str) for k in ("access_token", "id_token", "token_type")
    ):
        raise LoginError("the token response lacks access_token, id_token or token_type")
    claims = check_id_token(token["id_token"], issuer, args.client_id, nonce)
    info = http_json(meta["userinfo_endpoint"], token=token["access_token"])
    if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
        raise LoginError("/userinfo describes a different user than the id_token")
    email = info.get("email")
    if not isinstance(email, str) or not email:
        raise LoginError("/userinfo has no email")

    expires_in = token.get("expires_in")
    write_credentials(
        Path(args.out).expanduser(),
        {
            "access_token": token["access_token"],
            "refresh_token": token.get("refresh_token"),
            "id_token": token["id_token"],
            "token_type": token["token_type"],
            "expires_at": obtained + int(expires_in) if isinstance(expires_in, int) else None,
            "email": email,
            "issuer": issuer,
        },
    )
    return email


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo_login.py", description="Sign the Hearth demo CLI in to its provider."
    )
    parser.add_argument("--issuer", required=True, help="the provider's issuer URL")
    parser.add_argument("--client-id", default=CLIENT_ID)
    parser.add_argument("--out", default=DEFAULT_OUT, help="credential file to write")
    parser.add_argument("--port", type=_port, default=0, help="callback port (0: any free port)")
    parser.add_argument(
        "--timeout", type=_seconds, default=600.0, help="seconds to wait for the sign-in"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        email = login(args)
    except LoginError as e:
        print(f"demo-login: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # writing the credential file
        print(f"demo-login: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo-login: interrupted", file=sys.stderr)
        return 130
    print(f"Login successful: {email}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
