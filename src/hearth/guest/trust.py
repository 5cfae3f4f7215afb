"""Extra certificate authorities for the VM's clients, handed to the agent at run time
(PUT /trust), never baked into an image: for an operator whose upstream proxy re-signs TLS,
and for the tests' CA. They live in /run (gone with the VM) as two files: the extra CAs
alone, and the system bundle with them appended; each client is pointed at one of them by
the variable it honours (ENV), and Firefox by its policy (Certificates.Install).

Standard library only; the host imports it (as hearth.guest.trust) for the paths.
"""

from __future__ import annotations

import os
import re

if __package__:
    from . import fileio
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import fileio

TRUST_DIR = "/run/hearth/trust"
EXTRA = f"{TRUST_DIR}/extra-ca.pem"
BUNDLE = f"{TRUST_DIR}/ca-bundle.pem"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MAX_PEM = 256 * 1024
# Node (the CLIs) adds NODE_EXTRA_CA_CERTS to its own roots; OpenSSL clients (curl, Python,
# git) and Codex (CODEX_CA_CERTIFICATE) take a whole bundle.
ENV = {
    "NODE_EXTRA_CA_CERTS": EXTRA,
    "SSL_CERT_FILE": BUNDLE,
    "CURL_CA_BUNDLE": BUNDLE,
    "REQUESTS_CA_BUNDLE": BUNDLE,
    "CODEX_CA_CERTIFICATE": BUNDLE,
}
_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?"
)


class TrustError(ValueError):
    """The PEM is not a list of certificates; the message says what is wrong."""


def install(pem: str, directory: str = TRUST_DIR, system_bundle: str = SYSTEM_BUNDLE) -> int:
    """Write the extra CAs and the combined bundle (replacing earlier ones); how many."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM:
        raise TrustError(f'"pem" must be a string of at most {MAX_PEM} characters')
    certs = _CERT.findall(pem)
    if not certs or _CERT.sub("", pem).strip():
        raise TrustError('"pem" must hold PEM certificates (BEGIN/END CERTIFICATE) only')
    extra = "".join(c if c.endswith("\n") else c + "\n" for c in certs)
    try:
        with open(system_bundle) as f:
            system = f.read()
    except FileNotFoundError:
        system = ""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _write(os.path.join(directory, os.path.basename(EXTRA)), extra)
    _write(os.path.join(directory, os.path.basename(BUNDLE)), system + extra)
    return len(certs)


def _write(path: str, text: str) -> None:
    """Replace `path` with `text`, readable by every user (certificates are public)."""
    fileio.write_atomic(path, text.encode(), 0o644)
