"""The `demo` provider's identity provider: a real OpenID Connect server (Authlib on Flask)
with an HTML login form, run by Hearth's demo and test fixtures as its own host, so a
browser VM can sign the demo CLI in the way it signs real CLIs in.

Run it with `python -m hearth.demo.idp`; build it with create_app, or run it on a thread
with serve_in_thread.
"""

from .app import create_app
from .models import CLIENT_ID, is_loopback_redirect
from .server import RunningIdp, serve_in_thread

__all__ = ["CLIENT_ID", "RunningIdp", "create_app", "is_loopback_redirect", "serve_in_thread"]
