"""Asking the provider whether it still accepts the CLI's sign-in, from the CLI VM.

Claude Code's and Codex's status commands read only their own files, so a token the user
revoked at the provider looks valid to them. A probe is one request the CLI itself makes with
its access token (Claude Code's profile, Codex's workspace check), sent from the VM through
the same egress the CLI uses, with the values taken from the CLI's credential file here so
no token crosses to the host. The answer is only the HTTP status and a short excerpt of the
body with the token cut out: never the token, never the whole body.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

if __package__:
    from . import protocol
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import protocol

TIMEOUT = 20.0  # seconds for the provider's answer
EXCERPT = 300  # characters of a refusal's body returned


class ProbeError(ValueError):
    """The credential file lacks what the probe names (the request itself is checked by
    hearth.guest.protocol.ProbeSpec)."""


def _lookup(document: Any, path: tuple[str, ...], file: str) -> str:
    value = document
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise ProbeError(f"{file} holds no {'.'.join(path)}")
    return value


def probe(
    spec: protocol.ProbeSpec, files: dict[str, bytes], cafile: str | None = None
) -> dict[str, Any]:
    """Send the probe with the values from `files` (the provider's credential files, by
    path), trusting the system's CAs or `cafile`; {"status": the HTTP status or None if the
    provider was not reached, "detail": what went wrong, None on a 2xx}."""
    if spec.token_file not in files:
        raise ProbeError(f"{spec.token_file} is not one of the installed credential files")
    try:
        document = json.loads(files[spec.token_file])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProbeError(f"{spec.token_file} is not JSON") from None
    token = _lookup(document, spec.token_path, spec.token_file)
    headers = {**spec.headers, "Authorization": f"Bearer {token}"}
    headers.update(
        {name: _lookup(document, path, spec.token_file) for name, path in spec.file_headers.items()}
    )
    context = ssl.create_default_context(cafile=cafile)
    request = urllib.request.Request(spec.url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:
            return {"status": answer.status, "detail": None}
    except urllib.error.HTTPError as e:
        body = e.read(4096).decode("utf-8", "replace")
        excerpt = " ".join(body.replace(token, "[token]").split())[:EXCERPT]
        return {"status": e.code, "detail": f"{e.code} {e.reason}: {excerpt}".strip(": ")}
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return {"status": None, "detail": f"cannot reach {urlsplit(spec.url).hostname}: {reason}"}
