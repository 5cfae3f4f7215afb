"""Extra CAs for a VM's clients (hearth/guest/trust.py), written where the agent would."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from hearth.guest import trust
from tests.certificates import CertAuthority


def test_install_writes_the_extra_cas_and_the_system_bundle_with_them(tmp_path: Path):
    system = tmp_path / "system.pem"
    other = CertAuthority.create().pem.decode()
    system.write_text(other)
    pem = CertAuthority.create().pem.decode()
    assert trust.install(pem, str(tmp_path / "trust"), str(system)) == 1
    extra, bundle = tmp_path / "trust/extra-ca.pem", tmp_path / "trust/ca-bundle.pem"
    assert extra.read_text() == pem
    assert bundle.read_text() == other + pem
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o644
    # What OpenSSL clients are pointed at loads as two CAs.
    context = ssl.create_default_context(cafile=str(bundle))
    assert len(context.get_ca_certs()) == 2
    # A second install replaces the first.
    assert trust.install(other + pem, str(tmp_path / "trust"), str(system)) == 2
    assert extra.read_text() == other + pem


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "hello",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        None,
        "x" * (trust.MAX_PEM + 1),
    ],
)
def test_install_refuses_what_is_not_certificates(tmp_path: Path, pem):
    with pytest.raises(trust.TrustError):
        trust.install(pem, str(tmp_path / "trust"), str(tmp_path / "none"))
    assert not (tmp_path / "trust").exists()


def test_a_certificate_with_anything_else_is_refused(tmp_path: Path):
    pem = CertAuthority.create().pem.decode()
    with pytest.raises(trust.TrustError, match="PEM certificates"):
        trust.install(
            pem + "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n",
            str(tmp_path / "trust"),
        )
