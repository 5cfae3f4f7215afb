"""The BROWSER a CLI runs during a login: it records the URL instead of opening a browser.

CLIs hand their authorize URL to $BROWSER (Claude Code spawns the value as one executable,
Codex's webbrowser crate splits it on spaces) or to `xdg-open` (Gemini CLI's `open` package),
so the agent points both at a wrapper script that runs this file. It appends the URL to
$HEARTH_BROWSER_URL_FILE, which the agent polls, and exits 0 at once: a CLI that waits for
its browser must not be held up, and the agent opens Firefox itself. Standard library only.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

URL_FILE_ENV = "HEARTH_BROWSER_URL_FILE"
MAX_URL = 16 * 1024


def is_web_url(text: str) -> bool:
    """An http(s) URL on one line: the only thing worth handing to a browser."""
    if len(text) > MAX_URL or any(ch.isspace() for ch in text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def main(argv: list[str]) -> int:
    path = os.environ.get(URL_FILE_ENV)
    # The URL is the last argument that is one: some openers pass flags before it.
    urls = [arg for arg in argv if is_web_url(arg)]
    if not path or not urls:
        print(f"hearth-browser-shim: no {URL_FILE_ENV} or no http(s) URL given", file=sys.stderr)
        return 2
    # One O_APPEND write per URL, so URLs from concurrent invocations never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (urls[-1] + "\n").encode())
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
