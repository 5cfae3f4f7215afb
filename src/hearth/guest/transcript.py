"""A CLI's terminal output as plain text, and what of it may be shown: escape sequences
stripped (a redraw becomes a line break), only a bounded tail kept in memory, and a screen
redacted of URL queries and token-like strings before it goes into an error.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import codecs
import re

TAIL_CHARS = 64 * 1024  # plain-text output kept in memory
MATCH_CONTEXT = 4096  # earlier text searched again with each new chunk (a prompt split by a read)
MAX_PENDING_ESCAPE = 4096  # an unfinished escape sequence held back for the next chunk, at most
SCREEN_LINES = 12  # the CLI's last non-empty lines that a failed login's error ends with
SCREEN_CHARS = 1500  # and at most this much of them

# OSC (hyperlinks, titles) up to BEL or ST; CSI with its final byte captured; DCS/SOS/PM/APC
# strings; two-byte escapes (not the introducers of the others, so a sequence split by a
# read is never mistaken for a short one).
ESCAPE = re.compile(
    r"\x1b(?:\][^\x07\x1b]*(?:\x07|\x1b\\)|\[[0-?]*[ -/]*([@-~])|[PX^_][^\x1b]*\x1b\\"
    r"|[ -/]*[0-OQ-WYZ\\`-~])"
)
# CSI finals that move the cursor or erase: where a TUI redraws, the plain text gets a line
# break, so words from different places on the screen are never glued together.
CURSOR_FINALS = frozenset("ABCDEFGHJKSTdf")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A URL: what comes before its query or fragment, and the query or fragment.
URL = re.compile(r"(?P<base>[A-Za-z][A-Za-z0-9+.-]*://[^\s?#]*)(?P<query>[?#]\S*)?")
TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")
LETTER, DIGIT = re.compile(r"[A-Za-z]"), re.compile(r"[0-9]")
REDACTED = "[redacted]"


def _escape_replacement(match: re.Match[str]) -> str:
    return "\n" if match.group(1) in CURSOR_FINALS else ""


def _incomplete_escape(text: str) -> int:
    """Where an escape sequence that the next read may complete begins, or -1."""
    i = text.find("\x1b", max(0, len(text) - MAX_PENDING_ESCAPE))
    while i != -1:
        match = ESCAPE.match(text, i)
        if match is None:
            return i
        i = text.find("\x1b", match.end())
    return -1


class Transcript:
    """The CLI's output as plain text. Only a bounded tail is kept, and only in memory."""

    def __init__(self, limit: int = TAIL_CHARS) -> None:
        self.limit = limit
        self.tail = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> str:
        """Add raw output; return the text to search: the new text after some context."""
        text = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        cut = -1 if final else _incomplete_escape(text)
        if cut == -1 and not final and text.endswith("\r"):
            cut = len(text) - 1  # the "\r" of a "\r\n" the next read completes
        if cut != -1:
            text, self._pending = text[:cut], text[cut:]
        text = ESCAPE.sub(_escape_replacement, text).replace("\r\n", "\n").replace("\r", "\n")
        text = CONTROL.sub("", text)
        window = self.tail[-MATCH_CONTEXT:] + text
        self.tail = (self.tail + text)[-self.limit :]
        return window


def _hide_tokens(text: str) -> str:
    def hide(run: re.Match[str]) -> str:
        token = LETTER.search(run[0]) and DIGIT.search(run[0])
        return REDACTED if token else run[0]

    return TOKEN_RUN.sub(hide, text)


def redact(text: str) -> str:
    """`text` without what may be a secret, so that a CLI's screen can go into an error the
    controller stores and shows: a URL keeps its scheme, host and path but not its query or
    fragment (codes, states, PKCE challenges), and a long run of token characters holding
    letters and digits (an API key, a device code, a JWT) becomes [redacted]. Path segments
    are judged one by one, so a URL's path stays readable."""
    parts, end = [], 0
    for url in URL.finditer(text):
        base = "/".join(_hide_tokens(segment) for segment in url["base"].split("/"))
        parts += [_hide_tokens(text[end : url.start()]), base, "?\u2026" if url["query"] else ""]
        end = url.end()
    parts.append(_hide_tokens(text[end:]))
    return "".join(parts)


def last_screen(tail: str) -> str:
    """The CLI's last few non-empty lines on one line, redacted and capped (keeping the
    newest): what a person at its terminal would have seen when the login failed."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()][-SCREEN_LINES:]
    screen = redact(" | ".join(lines))
    return screen if len(screen) <= SCREEN_CHARS else "\u2026" + screen[1 - SCREEN_CHARS :]
