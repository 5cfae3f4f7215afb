"""A client for the stand-ins, run in the controller's namespace (where a VM's egress
leaves from): requests to the providers' names, and a sign-in done the way the CLI does it,
for tests that need tokens the stand-in issued without a browser VM."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hearth.demo.sandbox import nsenter
from tests.fake_internet import WEB
from tests.standins.anthropic import CLIENT_ID

# httpx to the stand-ins' names at the fake internet's web server, trusting its CA.
CLIENT = """
import json, sys, httpx
ca, calls = sys.argv[1], json.loads(sys.stdin.read())  # argv[2]: where the names live
transport = httpx.HTTPTransport(verify=ca)
out = []
with httpx.Client(transport=transport, follow_redirects=False, timeout=10) as c:
    for method, url, kw in calls:
        host = url.split("/")[2]
        r = c.request(method, url.replace(host, sys.argv[2], 1), headers={
            "Host": host, "x-standin-test-caller": "1", **kw.pop("headers", {})},  # TEST_CALLER
            extensions={"sni_hostname": host}, **kw)
        out.append([r.status_code, dict(r.headers), r.text])
print(json.dumps(out))
"""


@dataclass
class Caller:
    """Runs [method, url, httpx kwargs] requests in `namespace`: [status, headers, text]."""

    namespace: str
    ca: Path

    def __call__(self, *calls) -> list:
        done = subprocess.run(
            [*nsenter(self.namespace), sys.executable, "-c", CLIENT, str(self.ca), WEB],
            input=json.dumps(calls),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"the stand-in client failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout)


def sign_in(call, verifier: str = "v" * 43) -> dict:
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "code": "true",
        "client_id": CLIENT_ID,
        "response_type": "code",
        "redirect_uri": "http://localhost:41234/callback",
        "scope": "user:inference",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st8",
    }
    page, approved = call(
        ["GET", "https://claude.com/cai/oauth/authorize", {"params": params}],
        ["POST", "https://claude.com/cai/oauth/approve", {"data": params}],
    )
    assert page[0] == 200 and 'id="approve"' in page[2], page
    assert approved[0] == 302, approved
    location = urlsplit(approved[1]["location"])
    assert location.netloc == "localhost:41234" and parse_qs(location.query)["state"] == ["st8"]
    return {
        "code": parse_qs(location.query)["code"][0],
        "verifier": verifier,
        "redirect_uri": params["redirect_uri"],
    }


def exchange(auth: dict, **changes) -> list:
    body = {
        "grant_type": "authorization_code",
        "code": auth["code"],
        "client_id": CLIENT_ID,
        "redirect_uri": auth["redirect_uri"],
        "code_verifier": auth["verifier"],
        "state": "st8",
        **changes,
    }
    return ["POST", "https://platform.claude.com/v1/oauth/token", {"json": body}]
