"""Start the browser VM's VNC server with the per-VM password from the seed.

Run by hearth-vnc.service. The password goes to `vncpasswd -f` on stdin (never on argv,
where any process could read it from /proc), its obfuscated form into a 0600 file under
/run, and then this process becomes Xtigervnc, so systemd supervises the server itself.
Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__:
    from . import ports, seed
    from .fileio import write_private
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import ports
    import seed
    from fileio import write_private

PASSWD_FILE = Path("/run/hearth/vncpasswd")
VNCPASSWD = ("vncpasswd", "-f")
# Listens on every interface: the host's firewall decides who may reach its port.
XVNC = (
    "Xtigervnc",
    ":1",
    "-rfbport",
    str(ports.VNC_PORT),
    "-rfbauth",
    str(PASSWD_FILE),
    "-SecurityTypes",
    "VncAuth",
    "-geometry",
    "1280x800",
    "-depth",
    "24",
    "-AlwaysShared",
)
VNC_AUTH_CHARS = 8  # classic VNC authentication uses only the first 8 characters


def log(message: str) -> None:
    print(f"hearth-vnc: {message}", flush=True)


def vnc_password(data: dict[str, Any]) -> str:
    """The seed's vnc_password; `vncpasswd -f` reads one password per line, so no newlines."""
    password = data.get("vnc_password")
    if not isinstance(password, str) or not password:
        raise seed.SeedError("seed has no vnc_password (a non-empty string)")
    if any(ch in password for ch in "\r\n\0"):
        raise seed.SeedError("seed vnc_password contains a line break or NUL")
    return password


def obfuscate(password: str, command: Sequence[str] = VNCPASSWD) -> bytes:
    """The password file content `vncpasswd -f` makes from `password` (given on stdin)."""
    done = subprocess.run(
        list(command), input=(password + "\n").encode(), capture_output=True, timeout=30
    )
    if done.returncode != 0 or len(done.stdout) != VNC_AUTH_CHARS:
        detail = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {done.returncode}, "
            f"{len(done.stdout)} bytes out): {detail}"
        )
    return done.stdout


def main() -> int:
    try:
        password = vnc_password(seed.read_guest_seed())
        if len(password) > VNC_AUTH_CHARS:
            log(f"note: VNC authentication uses only the first {VNC_AUTH_CHARS} characters")
        write_private(PASSWD_FILE, obfuscate(password))
    except (OSError, RuntimeError, subprocess.SubprocessError, seed.SeedError) as e:
        log(f"error: {e}")
        return 1
    log(f"wrote {PASSWD_FILE}; starting Xtigervnc on display :1, port {ports.VNC_PORT}")
    try:
        os.execvp(XVNC[0], XVNC)
    except OSError as e:
        log(f"error: cannot start {XVNC[0]}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
