"""The egress parts that need no network: names and patterns, refused addresses, reading the
name from a TLS ClientHello or an HTTP request, DNS answers, policies, upstream settings."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

import dns.message
import dns.rcode
import pytest

from hearth.config import Settings
from hearth.core.egress import allowed_names
from hearth.net.egress import names
from hearth.net.egress.addresses import refusal
from hearth.net.egress.dns import DnsResponder
from hearth.net.egress.policy import EgressPolicy
from hearth.net.egress.sniff import SniffError, http_host, tls_server_name
from hearth.net.egress.upstream import Upstream


@pytest.mark.parametrize(
    "pattern, name, hit",
    [
        ("claude.com", "claude.com", True),
        ("claude.com", "api.claude.com", False),
        ("*.anthropic.com", "api.anthropic.com", True),
        ("*.anthropic.com", "anthropic.com", False),
        ("*.anthropic.com", "evilanthropic.com", False),
        ("*.anthropic.com", "a.b.anthropic.com", True),
    ],
)
def test_patterns(pattern, name, hit):
    assert names.matches(names.normalize_pattern(pattern), names.normalize(name)) is hit


@pytest.mark.parametrize(
    "bad", ["", "a b.com", "-x.com", "x..com", "10.0.0.1", "é.com", "a" * 64 + ".com"]
)
def test_what_is_not_a_host_name(bad):
    with pytest.raises(ValueError):
        names.normalize(bad)


def test_names_are_folded():
    assert names.normalize("Claude.COM.") == "claude.com"


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.100.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
    ],
)
def test_never_reachable(address):
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["198.51.100.10", "203.0.113.8", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_the_controllers_own_address_is_refused():
    own = ipaddress.ip_address("198.51.100.10")
    assert "controller's own" in refusal(own, frozenset({own}))


def _client_hello(server_name: str | None) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _sniff(read, *chunks: bytes):
    """What `read` makes of a stream of `chunks`."""

    async def run():
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        return await read(reader)

    return asyncio.run(run())


def test_the_sni_is_read_and_the_bytes_kept_even_split_in_pieces():
    hello = _client_hello("platform.claude.com")
    name, head = _sniff(tls_server_name, hello[:5], hello[5:40], hello[40:])
    assert (name, head) == ("platform.claude.com", hello)


@pytest.mark.parametrize(
    "stream, problem",
    [
        (_client_hello(None), "names no server"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a TLS"),
        (b"", "closed before"),
    ],
)
def test_what_names_no_server_is_refused(stream, problem):
    with pytest.raises(SniffError, match=problem):
        _sniff(tls_server_name, stream)


@pytest.mark.parametrize(
    "head, host",
    [
        (b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "example.org"),
        (b"GET / HTTP/1.1\r\nHost: example.org:8080\r\nX: y\r\n\r\n", "example.org"),
        (b"GET / HTTP/1.0\r\nHost: [2001:db8::1]:80\r\n\r\n", "2001:db8::1"),
    ],
)
def test_the_http_host_is_read(head, host):
    assert _sniff(http_host, head[:10], head[10:]) == (host, head)


@pytest.mark.parametrize(
    "head, problem",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "Host"),
        (b"\x16\x03\x01\x00", "not an HTTP"),
        (b"GET / HTTP/1.0\r\n\r\n", "no Host header"),
    ],
)
def test_requests_without_a_host_are_refused(head, problem):
    with pytest.raises(SniffError, match=problem):
        _sniff(http_host, head)


POLICY = EgressPolicy("vm1", "alice", (("claude.com", "claude_code"),))


def _ask(name: str, kind: str = "A", source: str = "192.168.100.2") -> tuple[str, list, list]:
    audit: list = []

    async def policies(address: str):
        return POLICY if address == "192.168.100.2" else None

    responder = DnsResponder("192.168.100.1", policies, audit.append)
    query = dns.message.make_query(name, kind)
    answer = dns.message.from_wire(asyncio.run(responder.answer(query.to_wire(), source)))
    assert answer.id == query.id
    return dns.rcode.to_text(answer.rcode()), [str(r) for a in answer.answer for r in a], audit


def test_dns_answers_allowed_names_with_the_gateway():
    assert _ask("claude.com")[:2] == ("NOERROR", ["192.168.100.1"])
    assert _ask("Claude.Com.", "AAAA")[:2] == ("NOERROR", [])  # IPv4 only, to the gateway


def test_dns_refuses_other_names_and_unknown_vms_and_audits_them():
    rcode, answers, audit = _ask("example.net")
    assert (rcode, answers) == ("NXDOMAIN", [])
    assert (audit[0].name, audit[0].vm_id, audit[0].verdict) == ("example.net", "vm1", "refused")
    assert _ask("claude.com", source="192.168.100.9")[0] == "REFUSED"


def test_dns_garbage_gets_formerr_or_nothing():
    responder = DnsResponder("192.168.100.1", lambda a: None, lambda r: None)
    assert asyncio.run(responder.answer(b"\x00\x01", "192.168.100.2")) is None
    reply = asyncio.run(
        responder.answer(b"\x12\x34\x01\x00" + b"\x00\x01" + b"\xff" * 10, "192.168.100.2")
    )
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR


def test_policies_from_the_specs_and_the_operators_settings():
    settings = Settings(
        egress_allow={"claude_code": ["*.example.org"]},
        egress_deny={"claude_code": ["claude.ai"]},
        google_sso=["claude_code"],
    )
    browser = allowed_names(settings, "claude_code", browser=True)
    assert {"claude.com", "platform.claude.com", "*.example.org", "accounts.google.com"} <= set(
        browser
    )
    assert "claude.ai" not in browser  # denied by the operator
    # The CLI's own calls while it signs in (profile, roles) are on the API host.
    assert "api.anthropic.com" in browser
    codex_browser, codex_cli = (allowed_names(Settings(), "codex", b) for b in (True, False))
    assert "chatgpt.com" not in codex_browser and "auth-cdn.oaistatic.com" not in codex_cli
    cli = allowed_names(settings, "claude_code", browser=False)
    assert {"api.anthropic.com", "platform.claude.com", "*.example.org"} <= set(cli)
    assert "accounts.google.com" not in cli and "claude.com" not in cli
    assert "accounts.google.com" not in allowed_names(Settings(), "claude_code", True)


def test_every_spec_names_only_valid_patterns():
    from hearth import providers

    for name in providers.names():
        for browser in (True, False):
            for pattern in allowed_names(Settings(), name, browser):
                assert names.normalize_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "url, problem",
    [
        ("ftp://u:pw-secret@h:1", "scheme"),
        ("http://u:pw-secret@h", "host and a port"),
        ("http://u:pw-secret@h:x", "numeric port"),
        ("socks5://u:pw-secret@h:1/p", "no path"),
    ],
)
def test_bad_upstreams_say_why_without_the_password(url, problem):
    with pytest.raises(ValueError, match=problem) as e:
        Upstream.parse(url)
    assert "pw-secret" not in str(e.value)
    with pytest.raises(ValueError) as e:
        Settings(upstream_proxy=url)
    assert "pw-secret" not in str(e.value)


def test_an_upstream_is_shown_without_its_credentials():
    up = Upstream.parse("socks5://user:pw-secret@203.0.113.9:1080")
    assert up.shown == "socks5://203.0.113.9:1080" and "pw-secret" not in repr(up)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("egress_allow", {"nope": ["a.com"]}, "unknown provider"),
        ("egress_allow", {"demo": ["not a name"]}, "not a host name"),
        ("egress_hosts", {"idp.test": "300.1.1.1"}, "IPv4 or IPv6"),
        ("egress_resolver", "1.2.3.4:0", "port"),
        ("google_sso", ["nope"], "unknown provider"),
        ("vm_ca_file", "/nonexistent/ca.pem", "cannot read"),
    ],
)
def test_bad_egress_settings_name_the_problem(field, value, problem):
    with pytest.raises(ValueError, match=problem):
        Settings(**{field: value})


def test_json_settings_from_the_environment():
    settings = Settings.from_environ({"HEARTH_EGRESS_ALLOW": '{"demo": ["Idp.Demo.Test"]}'})
    assert settings.egress_allow == {"demo": ["idp.demo.test"]}
    with pytest.raises(ValueError, match="HEARTH_GOOGLE_SSO must be JSON"):
        Settings.from_environ({"HEARTH_GOOGLE_SSO": "claude_code"})
