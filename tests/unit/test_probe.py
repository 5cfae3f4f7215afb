"""The agent's probe (hearth/guest/probe.py) against a real HTTPS server on loopback, with a
certificate from a test CA: the token and headers come from the credential file, only the
status and a token-free excerpt come back, and malformed probes are clear errors."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hearth.guest.probe import ProbeError, probe
from hearth.guest.protocol import ProbeSpec, ProtocolError
from hearth.providers import claude_code, codex
from tests.certificates import CertAuthority

TOKEN = "sk-ant-oat01-live-token-1234567890"
FILE = ".claude/.credentials.json"
FILES = {FILE: json.dumps({"claudeAiOauth": {"accessToken": TOKEN, "account": "acct-1"}}).encode()}


class Provider(BaseHTTPRequestHandler):
    """Accepts TOKEN with the beta header; refuses anything else, echoing the token as a
    careless provider might."""

    seen: list = []  # the requests' headers (case-insensitive)

    def do_GET(self) -> None:
        Provider.seen.append(self.headers)
        ok = (
            self.headers.get("Authorization") == f"Bearer {TOKEN}"
            and self.headers.get("anthropic-beta") == "oauth-2025-04-20"
        )
        body = (
            b'{"account": {}}'
            if ok
            else json.dumps(
                {
                    "error": {
                        "type": "authentication_error",
                        "message": f"Invalid bearer token {self.headers.get('Authorization')}",
                    }
                }
            ).encode()
        )
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def provider(tmp_path) -> Iterator[tuple[str, str]]:
    """(the server's https origin, the CA file that trusts it)."""
    ca = CertAuthority.create()
    cert, key = ca.issue(["localhost"], tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Provider.seen.clear()
    try:
        yield f"https://localhost:{server.server_address[1]}", str(tmp_path / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()


def _spec(url: str, **changes) -> ProbeSpec:
    data = {
        **claude_code.SPEC.probe.to_agent().to_json(),
        "url": f"{url}/api/oauth/profile",
        **changes,
    }
    return ProbeSpec.from_json(json.loads(json.dumps(data)))


def test_a_token_the_provider_accepts(provider):
    url, ca = provider
    assert probe(_spec(url), FILES, cafile=ca) == {"status": 200, "detail": None}
    assert Provider.seen[0]["Authorization"] == f"Bearer {TOKEN}"


def test_a_refusal_comes_back_without_the_token(provider):
    url, ca = provider
    other = {FILE: FILES[FILE].replace(TOKEN.encode(), b"sk-ant-oat01-revoked-0987654321")}
    answer = probe(_spec(url), other, cafile=ca)
    assert answer["status"] == 401
    assert "authentication_error" in answer["detail"]
    assert "revoked-0987654321" not in answer["detail"] and "[token]" in answer["detail"]


def test_headers_from_the_file(provider):
    url, ca = provider
    spec = _spec(url, file_headers={"chatgpt-account-id": ["claudeAiOauth", "account"]})
    probe(spec, FILES, cafile=ca)
    assert Provider.seen[0]["chatgpt-account-id"] == "acct-1"


def test_an_untrusted_certificate_is_no_verdict(provider):
    url, _ = provider
    answer = probe(_spec(url), FILES)  # the system's CAs only
    assert answer["status"] is None and "cannot reach localhost" in answer["detail"]
    assert TOKEN not in answer["detail"] and not Provider.seen


def test_nothing_listens_is_no_verdict():
    answer = probe(_spec("https://127.0.0.1:9"), FILES)
    assert answer["status"] is None and "cannot reach 127.0.0.1" in answer["detail"]


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "must be a JSON object"),
        ({"url": "http://a.test/", "token_file": FILE, "token_path": ["x"]}, "https URL"),
        ({"url": "https://a.test/", "token_file": "", "token_path": ["x"]}, "token_file"),
        ({"url": "https://a.test/", "token_file": FILE, "token_path": []}, "token_path"),
        (
            {
                "url": "https://a.test/",
                "token_file": FILE,
                "token_path": ["x"],
                "headers": {"a": 1},
            },
            "headers",
        ),
    ],
)
def test_malformed_probes(data, message):
    with pytest.raises(ProtocolError, match=message):
        ProbeSpec.from_json(data)


def test_a_file_without_the_token_is_a_clear_error():
    spec = ProbeSpec.from_json(codex.SPEC.probe.to_agent().to_json())
    assert spec == codex.SPEC.probe.to_agent()
    with pytest.raises(ProbeError, match="not one of the installed"):
        probe(spec, FILES)
    with pytest.raises(ProbeError, match="holds no tokens.access_token"):
        probe(spec, {codex.AUTH: b'{"tokens": {"access_token": ""}}'})
    with pytest.raises(ProbeError, match="is not JSON"):
        probe(spec, {codex.AUTH: b"\xff"})
