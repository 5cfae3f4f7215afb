"""A webhook receiver as docs/webhooks.md tells the app to write one, on 127.0.0.1 in a
thread of its own: it verifies each delivery with the documented snippet (read from the
document and run, so the two cannot drift), refuses a stale or badly signed one with 400,
answers a delivery id it already processed with 200 without processing it again, and keeps
what it processed.

`failing` scripts its first answers, to exercise Hearth's retries: "500" answers 500, and
"hang" answers nothing until long after the sender's timeout. A request it fails this way
is not processed, so its retry is no replay.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"
HANG_SECONDS = 30.0  # far past any sender timeout the tests set; ended early by close()
HUNG = "hung"


def documented_verifier() -> dict[str, Any]:
    """The namespace of docs/webhooks.md's Python snippet: `verify`, `Refused`, `TOLERANCE`."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/webhooks.md should hold exactly one Python snippet"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own document
    return namespace


@dataclass(frozen=True)
class Request:
    """One request as it arrived (headers by lower-case name, raw body), and the answer."""

    headers: dict[str, str]
    body: bytes
    answer: int
    why: str

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    secret: str
    endpoint_id: str = ""  # Hearth's id of the endpoint registered for this receiver
    failing: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # every one, as it arrived
    processed: dict[str, Request] = field(default_factory=dict)  # by delivery id

    def __post_init__(self) -> None:
        self._verifier = documented_verifier()
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/hearth"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The events processed, in arrival order (of one type, if given)."""
        with self._lock:
            found = [r.event for r in self.processed.values()]
        return [e for e in found if event_type in (None, e["type"])]

    def wait_events(self, count: int, timeout: float, event_type: str | None = None) -> list:
        """Wait until `count` events (of `event_type`) were processed; them."""
        with self._lock:
            done = self._lock.wait_for(lambda: len(self.events(event_type)) >= count, timeout)
        found = self.events(event_type)
        assert done, f"{len(found)} of {count} {event_type or ''} events came: {found}"
        return found

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """What the receiver answers to this request, processing it if it should."""
        try:
            delivery_id = self._verifier["verify"](self.secret, headers, body)
        except self._verifier["Refused"] as refused:
            return 400, str(refused)
        except KeyError as missing:
            return 400, f"no {missing} header"
        with self._lock:
            if delivery_id in self.processed:
                return 200, "a replay: already processed"
            plan = self.failing.pop(0) if self.failing else "ok"
        if plan == "hang":
            return 503, HUNG
        if plan == "500":
            return 500, "failing on purpose"
        with self._lock:
            self.processed[delivery_id] = Request(headers, body, 200, "processed")
            self._lock.notify_all()
        return 200, "processed"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, why = receiver.answer(headers, body)
                with receiver._lock:
                    receiver.requests.append(Request(headers, body, status, why))
                if why == HUNG:
                    receiver._closing.wait(HANG_SECONDS)
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(why)))
                    self.end_headers()
                    self.wfile.write(why.encode())
                except OSError:
                    pass  # the sender gave up on us (a "hang")

            def log_message(self, *args: object) -> None:
                pass

        return Handler
