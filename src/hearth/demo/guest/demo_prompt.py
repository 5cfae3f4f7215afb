"""The `demo` provider's prompt command: what `claude -p --output-format stream-json` is to
Claude Code, for the demo CLI, so Hearth's prompt path is exercised end to end.

`demo_prompt.py PROMPT` reads the credential file demo_login.py wrote. Like the real CLIs,
when fewer than REFRESH_MARGIN seconds of the access token remain it first refreshes it (the
demo IdP rotates refresh tokens: the old one dies, so the file must be rewritten, atomically
and 0600, before anything else). Then it asks the IdP's /userinfo who the token belongs to:
only a valid credential yields that answer. Its output is JSON lines on stdout, one flushed
every PACE seconds like a model's reply arriving in pieces, ending with
{"type": "result", "ok": true}. A failure is one {"type": "error", "reason": ...} line and
exit 1. `--status` checks the credential the same way and prints {"valid": true, "email"}
(exit 0) or {"valid": false, "reason"} (exit 1). Tokens are never printed.

Standard library only: it runs inside the VM with Debian's python3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__:
    from . import demo_login
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import demo_login

REFRESH_MARGIN = 300  # seconds before expires_at from which the token is refreshed first
PACE = 0.3  # seconds between output lines: the demo's reply arrives in pieces
INIT = {"type": "system", "subtype": "init", "model": "hearth-demo"}
REPLY = "This is the Hearth demo CLI. Your credential works, and this reply came from your VM."


class PromptError(Exception):
    """Ends the command with a reason that is safe to print (no token in it)."""


def load(path: Path) -> dict[str, Any]:
    try:
        creds = json.loads(path.read_text())
    except FileNotFoundError:
        raise PromptError("not signed in: no credential file (run the demo login)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptError(f"cannot read the credential file: {e}") from None
    if not isinstance(creds, dict) or not all(
        isinstance(creds.get(k), str) for k in ("access_token", "issuer")
    ):
        raise PromptError("the credential file lacks an access_token or an issuer")
    return creds


def refresh(creds: dict[str, Any], meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Redeem the refresh token for new tokens and rewrite the credential file with them."""
    if not isinstance(creds.get("refresh_token"), str):
        raise PromptError("the access token is about to expire and there is no refresh token")
    try:
        token = demo_login.http_json(
            meta["token_endpoint"],
            form={
                "grant_type": "refresh_token",
                "refresh_token": creds["refresh_token"],
                "client_id": demo_login.CLIENT_ID,
            },
        )
    except demo_login.LoginError as e:
        raise PromptError(f"the refresh was refused: {e}") from None
    obtained = int(time.time())
    if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
        raise PromptError("the refresh response has no access_token")
    expires_in = token.get("expires_in")
    fresh = {
        **creds,
        "access_token": token["access_token"],
        # Rotation: the provider sends a new refresh token and has revoked the old one.
        "refresh_token": token.get("refresh_token") or creds["refresh_token"],
        "id_token": token.get("id_token") or creds.get("id_token"),
        "token_type": token.get("token_type") or creds.get("token_type"),
        "expires_at": obtained + expires_in if isinstance(expires_in, int) else None,
    }
    demo_login.write_credentials(path, fresh)
    return fresh


def signed_in(path: Path) -> tuple[dict[str, Any], bool]:
    """Who the credential belongs to, per /userinfo (after a refresh when the access token
    is near expiry); and whether it was refreshed."""
    creds = load(path)
    try:
        meta = demo_login.discover(creds["issuer"])
        expires_at = creds.get("expires_at")
        due = isinstance(expires_at, int | float) and expires_at - time.time() < REFRESH_MARGIN
        if due:
            creds = refresh(creds, meta, path)
        info = demo_login.http_json(meta["userinfo_endpoint"], token=creds["access_token"])
    except demo_login.LoginError as e:
        raise PromptError(str(e)) from None
    if not isinstance(info, dict) or not isinstance(info.get("email"), str):
        raise PromptError("/userinfo has no email")
    return info, due


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def answer(prompt: str, path: Path) -> None:
    """The reply, as a stream of JSON lines a PACE apart. Like Claude Code's stream-json it
    opens with an init line before any network call; then the account, a greeting, and the
    prompt echoed back a word per line (so a long prompt makes a long run, as a real CLI
    working on a big task would be, for cancels to stop)."""
    emit(INIT)
    info, refreshed = signed_in(path)
    lines = [
        {"type": "account", "email": info["email"], "sub": info.get("sub"), "refreshed": refreshed},
        {"type": "assistant", "prompt_chars": len(prompt), "text": REPLY},
        *({"type": "assistant", "text": word} for word in prompt.split()),
        {"type": "result", "ok": True},
    ]
    for line in lines:
        time.sleep(PACE)  # the demo's pacing, not a wait for anything
        emit(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo_prompt.py", description="Answer a prompt as the Hearth demo CLI."
    )
    parser.add_argument("prompt", nargs="?", help="the prompt")
    parser.add_argument("--status", action="store_true", help="check the sign-in only")
    args = parser.parse_args(argv)
    if args.status == (args.prompt is not None):
        parser.error("give a prompt or --status")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = Path(demo_login.DEFAULT_OUT).expanduser()
    if args.status:
        try:
            info, _ = signed_in(path)
        except PromptError as e:
            print(json.dumps({"valid": False, "reason": str(e)}), flush=True)
            return 1
        print(json.dumps({"valid": True, "email": info["email"]}), flush=True)
        return 0
    try:
        answer(args.prompt, path)
    except PromptError as e:
        emit({"type": "error", "reason": str(e)})
        return 1
    except OSError as e:  # rewriting the credential file
        emit({"type": "error", "reason": f"cannot write the credential file: {e.strerror}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
