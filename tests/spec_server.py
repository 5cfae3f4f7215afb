"""A stand-in Firecracker API that holds its clients to the official OpenAPI spec.

As in Firecracker's own test framework (tests/framework/swagger_validator.py), each request is
checked against the schema of its path and method (JSON Schema Draft 4, `$ref`s resolved,
unknown fields rejected the way Firecracker's deserialiser rejects them). The server records
every request and answers the spec's success code, or 400 with a `fault_message` as Firecracker
does. It also writes the two files a successful `PUT /snapshot/create` names, as Firecracker
would, so a client's later steps find them.

Run as a script it is a fake `firecracker` binary: `spec_server.py --api-sock PATH`, recording
each request as a JSON line to $SPEC_SERVER_JOURNAL and answering 400 to the requests named in
$SPEC_SERVER_FAULTS ("PUT /actions=message;...").
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import threading
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft4Validator

SPEC_NAME = "firecracker-api-v1.16.1.yaml"


def spec_path() -> Path:
    """$HEARTH_FIRECRACKER_SPEC, else the spec in `shared/` beside the repository."""
    if env := os.environ.get("HEARTH_FIRECRACKER_SPEC"):
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "firecracker" / SPEC_NAME


class SpecViolation(ValueError):
    """A request the spec does not allow; the message says which rule it broke."""


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # the spec's path, e.g. /drives/{drive_id}
    body: Draft4Validator | None
    success: int


@dataclass
class Request:
    """One request as the server saw it; `fault` is None when it validated."""

    method: str
    path: str
    template: str | None
    body: Any
    fault: str | None


class ApiSpec:
    """The spec's operations, each with a validator for its body and its success code."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.version: str = doc["info"]["version"]
        definitions = doc["definitions"]
        self.operations: dict[tuple[str, str], Operation] = {}
        for template, methods in doc["paths"].items():
            for method, op in methods.items():
                params = [p for p in op.get("parameters", []) if p["in"] == "body"]
                body = (
                    Draft4Validator(_resolve(params[0]["schema"], definitions)) if params else None
                )
                codes = [int(c) for c in op["responses"] if str(c).isdigit() and str(c)[0] == "2"]
                key = (method.upper(), template)
                self.operations[key] = Operation(key[0], template, body, min(codes, default=204))

    @classmethod
    def load(cls, path: Path | None = None) -> ApiSpec:
        path = path or spec_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"Firecracker API spec not found at {path}; set HEARTH_FIRECRACKER_SPEC"
            )
        return cls(yaml.safe_load(path.read_text()))

    def match(self, path: str) -> list[tuple[str, dict[str, str]]]:
        """The spec paths `path` fits, with the values of their {parameters}."""
        parts = path.split("/")
        found = []
        for template in {t for _, t in self.operations}:
            tparts = template.split("/")
            if len(tparts) != len(parts):
                continue
            params = {}
            for part, tpart in zip(parts, tparts, strict=True):
                if tpart.startswith("{") and tpart.endswith("}") and part:
                    params[tpart[1:-1]] = part
                elif part != tpart:
                    break
            else:
                found.append((template, params))
        # A literal path (/balloon/statistics) wins over a template of the same shape.
        return sorted(found, key=lambda tp: len(tp[1]))

    def check(self, method: str, path: str, content_type: str, raw: bytes) -> tuple[Operation, Any]:
        """The operation a request is, and its body; raises SpecViolation if it breaks the spec."""
        candidates = self.match(path)
        if not candidates:
            raise SpecViolation(f"no path {path} in the spec")
        allowed = [(t, p) for t, p in candidates if (method, t) in self.operations]
        if not allowed:
            raise SpecViolation(f"the spec has no {method} on {candidates[0][0]}")
        template, params = allowed[0]
        op = self.operations[(method, template)]
        if op.body is None:
            if raw:
                raise SpecViolation(f"{method} {template} takes no body")
            return op, None
        if content_type != "application/json":
            raise SpecViolation(f"{method} {template} needs application/json, not {content_type}")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise SpecViolation(f"{method} {template}: body is not JSON: {e}") from e
        errors = sorted(op.body.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            raise SpecViolation(
                f"{method} {template}: "
                + "; ".join(
                    f"{'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message}" for e in errors
                )
            )
        for name, value in params.items():
            if name in body and body[name] != value:
                raise SpecViolation(
                    f"{method} {path}: body {name} {body[name]!r} != path {value!r}"
                )
        return op, body


def _resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s; close objects with declared properties to unknown fields."""
    if "$ref" in schema:  # Draft 4: a $ref replaces its siblings (e.g. a description)
        return _resolve(definitions[schema["$ref"].removeprefix("#/definitions/")], definitions)
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _resolve(v, definitions) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _resolve(out[key], definitions)
    return out


class SpecServer:
    """The spec's API on a Unix socket, served from a thread; `requests` is what it received.

    `faults` maps "METHOD /path" to a fault_message answered (400) instead of success.
    """

    def __init__(
        self,
        socket_path: Path,
        spec: ApiSpec,
        faults: dict[str, str] | None = None,
        journal: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.spec = spec
        self.faults = faults or {}
        self.journal = journal
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, method: str, target: str, content_type: str, raw: bytes) -> tuple[int, Any]:
        """Validate and record one request; the status and JSON body to answer with."""
        path = urlsplit(target).path
        template = body = fault = None
        try:
            op, body = self.spec.check(method, path, content_type, raw)
            template = op.template
            status = op.success
        except SpecViolation as e:
            fault = str(e)
        request = Request(method, path, template, body, fault)
        with self._lock:
            self.requests.append(request)
            if self.journal is not None:
                with self.journal.open("a") as f:
                    f.write(json.dumps(asdict(request)) + "\n")
        if fault is not None:
            return 400, {"fault_message": fault}
        if injected := self.faults.get(f"{method} {path}"):
            return 400, {"fault_message": injected}
        if template == "/snapshot/create":
            for key in ("snapshot_path", "mem_file_path"):
                Path(body[key]).write_bytes(b"snapshot written by spec_server\n")
        return status, None

    def serve_forever(self) -> None:
        self._bind().serve_forever()

    def start(self) -> SpecServer:
        """Serve from a thread; `stop()` ends it."""
        self._thread = threading.Thread(target=self._bind().serve_forever, daemon=True)
        self._thread.start()
        return self

    def _bind(self) -> _UnixHTTPServer:
        self.socket_path.unlink(missing_ok=True)
        self._server = _UnixHTTPServer(str(self.socket_path), _Handler)
        self._server.owner = self
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> SpecServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # a client's kept-alive connection must not hold up shutdown
    owner: SpecServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _UnixHTTPServer

    def _answer(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload = self.server.owner.handle(
            self.command, self.path, self.headers.get_content_type(), raw
        )
        self.send_response(status)
        if payload is None:
            if status != 204:  # a 204 carries no length; anything else must, to keep alive
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: requests are recorded instead (and a Unix peer has no address to log)."""


def main(argv: list[str] | None = None) -> None:
    """Serve like a `firecracker` process would on --api-sock, until killed."""
    parser = argparse.ArgumentParser(description="fake firecracker: the API spec, validated")
    parser.add_argument("--api-sock", required=True, type=Path)
    args, _ = parser.parse_known_args(argv)
    faults = dict(
        item.split("=", 1) for item in os.environ.get("SPEC_SERVER_FAULTS", "").split(";") if item
    )
    journal = os.environ.get("SPEC_SERVER_JOURNAL")
    spec = ApiSpec.load()
    # Stdout is the serial console the driver appends to console.log.
    print(f"fake firecracker pid {os.getpid()} serving API v{spec.version}", flush=True)
    SpecServer(args.api_sock, spec, faults, Path(journal) if journal else None).serve_forever()


if __name__ == "__main__":
    main()
