"""A "fake internet" for the egress tests: a namespace of its own, joined to the controller's
namespace as its only way out, holding documentation addresses (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24) and real servers from Debian: nginx serving HTTPS (certificates from a test
CA) and HTTP for a few names, dnsmasq as the resolver the controller uses, tinyproxy (HTTP
CONNECT, with a password) and microsocks (SOCKS5, with a password) as upstream proxies that
leave from addresses of their own. No packet of it can reach the real network: the namespace
has no link but the one to the controller's namespace."""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hearth.demo.sandbox import link, nsenter, sandbox
from hearth.waiting import wait_for
from tests.certificates import CertAuthority

ROOT = Path(__file__).resolve().parents[1]
LINK = ipaddress.IPv4Network("192.0.2.0/24")
CONTROLLER_SIDE, INTERNET_SIDE = "192.0.2.1", "192.0.2.2"  # the link's two ends
WEB = "198.51.100.10"
RESOLVER = "198.51.100.53"
# A private address the web server also answers on: reachable only as the operator's named
# internal host (HEARTH_EGRESS_HOSTS), never through DNS.
INTRANET = "10.99.0.10"
HTTP_PROXY, SOCKS_PROXY = "203.0.113.8", "203.0.113.9"
HTTP_PROXY_PORT, SOCKS_PROXY_PORT = 3128, 1080
# The names the web server answers for (each with its own certificate).
SITES = (
    "claude.com",
    "platform.claude.com",
    "api.anthropic.com",
    "auth.openai.com",
    "chatgpt.com",
    "accounts.google.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "cloudcode-pa.googleapis.com",
    "developers.google.com",
    "example.org",
    "example.net",
    "intranet.example.org",
)
# The providers' services, answered by their stand-ins (tests/standins/) when asked for:
# module -> (its port in the fake internet, the names it serves).
STANDINS = {
    "anthropic": (9101, ("claude.com", "platform.claude.com", "api.anthropic.com")),
    "openai": (9102, ("auth.openai.com", "chatgpt.com")),
    "google": (
        9103,
        (
            "accounts.google.com",
            "oauth2.googleapis.com",
            "www.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "developers.google.com",
        ),
    ),
}
STANDIN_ANSWER = "Hello from the provider's stand-in."
# Names that resolve where no VM may go: a private address, cloud metadata, the controller.
TRAPS = {
    "internal.example.org": "10.20.30.40",
    "metadata.example.org": "169.254.169.254",
    "controller.example.org": CONTROLLER_SIDE,
}


@dataclass
class FakeInternet:
    namespace: str
    directory: Path
    ca: CertAuthority
    proxy_user: str
    proxy_password: str = field(repr=False)

    @property
    def http_proxy(self) -> str:
        return f"http://{self.proxy_user}:{self.proxy_password}@{HTTP_PROXY}:{HTTP_PROXY_PORT}"

    @property
    def socks_proxy(self) -> str:
        return f"socks5://{self.proxy_user}:{self.proxy_password}@{SOCKS_PROXY}:{SOCKS_PROXY_PORT}"

    def web_log(self) -> str:
        """nginx's access log: `<client address> <host> <scheme>` per request."""
        return (self.directory / "access.log").read_text()

    def proxy_log(self) -> str:
        return (self.directory / "tinyproxy.log").read_text()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.directory.glob("*.log")))

    def requests(self, standin: str) -> Path:
        """Where the stand-in `standin` (a module of tests/standins/) records its requests."""
        return self.directory / f"requests-{standin}.jsonl"


@contextlib.contextmanager
def fake_internet(
    controller_ns: str, directory: Path, standins: bool = False
) -> Iterator[FakeInternet]:
    """The fake internet behind `controller_ns` (which gets a default route into it); with
    `standins`, the providers' names are served by their stand-ins (tests/standins/)."""
    with sandbox("hearth-test-inet") as ns, contextlib.ExitStack() as stack:
        link(controller_ns, ns, LINK)
        _ip(controller_ns, "route", "replace", "default", "via", INTERNET_SIDE)
        for address in (WEB, RESOLVER, HTTP_PROXY, SOCKS_PROXY, INTRANET):
            _ip(ns, "addr", "add", f"{address}/32", "dev", "lo")
        ca = CertAuthority.create()
        inet = FakeInternet(ns, directory, ca, "hearth", secrets.token_urlsafe(12))
        directory.mkdir(parents=True, exist_ok=True)
        run = _starter(ns, directory, stack)
        run(
            "dnsmasq",
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={RESOLVER}",
                "--port=53",
                f"--pid-file={directory / 'dnsmasq.pid'}",
                "--log-queries",
                f"--log-facility={directory / 'dnsmasq.log'}",
                # Records with a TTL, and no data (not a refusal) for AAAA: as a
                # real zone would answer.
                "--local-ttl=60",
                *[
                    f"--host-record={name},{address}"
                    for name, address in [*((site, WEB) for site in SITES), *TRAPS.items()]
                ],
            ],
            ready=(RESOLVER, 53),
        )
        proxied: dict[str, int] = {}
        for module, (port, names) in STANDINS.items() if standins else ():
            run(
                module,
                [
                    sys.executable,
                    "-m",
                    f"tests.standins.{module}",
                    "--port",
                    str(port),
                    "--answer",
                    STANDIN_ANSWER,
                    "--record",
                    str(inet.requests(module)),
                ],
                ready=("127.0.0.1", port),
            )
            proxied.update(dict.fromkeys(names, port))
        _nginx(inet, run, proxied)
        (directory / "tinyproxy.conf").write_text(
            f"Port {HTTP_PROXY_PORT}\nListen {HTTP_PROXY}\nBind {HTTP_PROXY}\nTimeout 60\n"
            f'LogFile "{directory / "tinyproxy.log"}"\nLogLevel Connect\nMaxClients 200\n'
            f"BasicAuth {inet.proxy_user} {inet.proxy_password}\nConnectPort 443\n"
            "ConnectPort 80\nUser root\nGroup root\n"
        )
        run(
            "tinyproxy",
            ["tinyproxy", "-d", "-c", str(directory / "tinyproxy.conf")],
            ready=(HTTP_PROXY, HTTP_PROXY_PORT),
        )
        run(
            "microsocks",
            [
                "microsocks",
                "-i",
                SOCKS_PROXY,
                "-p",
                str(SOCKS_PROXY_PORT),
                "-b",
                SOCKS_PROXY,
                "-u",
                inet.proxy_user,
                "-P",
                inet.proxy_password,
            ],
            ready=(SOCKS_PROXY, SOCKS_PROXY_PORT),
        )
        yield inet


def _nginx(inet: FakeInternet, run, proxied: dict[str, int]) -> None:
    """nginx for every site: a page naming the site, or the site's stand-in behind it."""
    d = inet.directory
    servers = []
    for name in SITES:
        cert, key = inet.ca.issue([name], d / "certs")
        page = f"""return 200 "<!doctype html><title>{name} (test site)</title>
            <h1>hello from {name}</h1>\\n";"""
        if name in proxied:
            page = (
                f"proxy_pass http://127.0.0.1:{proxied[name]}; proxy_set_header Host $host;"
                " proxy_buffering off; proxy_http_version 1.1;"
            )
        servers.append(f"""
    server {{
        listen {WEB}:443 ssl; listen {WEB}:80; listen {INTRANET}:443 ssl;
        server_name {name};
        ssl_certificate {cert}; ssl_certificate_key {key};
        location / {{ {page} }}
    }}""")
    (d / "nginx.conf").write_text(f"""
user root; worker_processes 1; daemon off; pid {d / "nginx.pid"};
error_log {d / "nginx-error.log"};
events {{ worker_connections 4096; }}
http {{
    log_format hearth '$remote_addr $host $scheme';
    access_log {d / "access.log"} hearth;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    default_type text/html;
    server {{ listen {WEB}:80 default_server; return 421 "no such site\\n"; }}
    {"".join(servers)}
}}
""")
    (d / "tmp").mkdir(exist_ok=True)
    run("nginx", ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], ready=(WEB, 443))


def _starter(ns: str, directory: Path, stack: contextlib.ExitStack):
    def run(name: str, argv: list[str], ready: tuple[str, int]) -> None:
        out = (directory / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            [*nsenter(ns), *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )  # where `python -m tests.…` finds the tests
        out.close()
        stack.callback(_end, proc)
        wait_for(
            lambda: proc.poll() is not None or _listening(ns, *ready),
            20,
            f"{name} in the fake internet",
        )
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}: "
                f"{(directory / f'{name}.out').read_text()[-2000:]}"
            )

    return run


def _listening(ns: str, host: str, port: int) -> bool:
    """Whether something listens on host:port (TCP; for the resolver, UDP is what counts,
    and dnsmasq opens both)."""
    probe = subprocess.run(
        [*nsenter(ns), "ss", "-Hltun", f"src {host}:{port}"], capture_output=True, text=True
    )
    return bool(probe.stdout.strip())


def _end(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)
