"""`python -m hearth.demo.idp`: run the demo identity provider until SIGTERM or SIGINT.

The password comes from the environment only, so it is never in argv (visible to every
user through /proc) nor in the output.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .models import ACCESS_TOKEN_LIFETIME
from .server import POLL_INTERVAL, bind

PASSWORD_ENV = "HEARTH_DEMO_IDP_PASSWORD"


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _seconds(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of seconds")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hearth.demo.idp",
        description=f"Demo OpenID Connect provider. The users' password is read from "
        f"${PASSWORD_ENV}.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=0, help="port (0: any free port)")
    parser.add_argument("--issuer", help="issuer URL (default: http://HOST:PORT)")
    parser.add_argument(
        "--user",
        action="append",
        required=True,
        metavar="EMAIL",
        help="an account's e-mail (repeat for more accounts, all with the same password)",
    )
    parser.add_argument(
        "--token-ttl",
        type=_seconds,
        default=ACCESS_TOKEN_LIFETIME,
        metavar="SECONDS",
        help=f"access token lifetime (default {ACCESS_TOKEN_LIFETIME})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        print(f"hearth-demo-idp: error: set {PASSWORD_ENV} to the users' password", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="hearth-demo-idp: %(message)s")
    # A demo server on a private link inside Hearth's namespaces, where TLS would prove
    # nothing; Authlib otherwise accepts plain HTTP for loopback issuers only.
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    try:
        server, issuer = bind(
            args.host, args.port, dict.fromkeys(args.user, password), args.issuer, args.token_ttl
        )
    except (OSError, ValueError) as e:
        print(
            f"hearth-demo-idp: error: cannot start on {args.host}:{args.port}: {e}", file=sys.stderr
        )
        return 1

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True)
    thread.start()
    print(
        f"hearth-demo-idp: listening on http://{args.host}:{server.port} issuer={issuer}",
        flush=True,
    )
    stopping.wait()
    server.shutdown()
    thread.join()
    logging.getLogger("hearth.demo.idp").info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
