"""Firefox ESR on the browser VM's display: open a URL, fit the window, report its title.

The agent opens the sign-in page here for the user to see through the live view. Each login
gets a fresh profile (so no cookies carry over between logins) under the run directory; the
image's enterprise policies suppress first-run pages. A second URL goes to the running
instance as a new tab through Firefox's own remoting (same profile, no --new-instance), over
a private D-Bus session bus. There is no window manager on the VNC display, so the window is
moved and sized with xdotool once it maps.

Under software emulation Firefox needs about a minute to paint its first page: nothing here
waits for that. `status()` reports, and the controller polls until `ready`. A warm pool's VM
(hearth.core.warm_pool) starts Firefox ahead of any login on the blank page (BLANK_PAGE,
titled BLANK_TITLE, which `ready` does not count as a sign-in page); the login's sign-in page
then comes through that page, which forwards to it, skipping the start and the first paint.

Tests on hosts without X replace the commands: HEARTH_OPEN_URL_COMMAND (run with the URL
appended, instead of Firefox) and HEARTH_WINDOW_TITLE_COMMAND (prints the window title).
Standard library only.
"""

from __future__ import annotations

import html
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__:
    from . import fileio, processes, protocol
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import fileio
    import processes
    import protocol

FIREFOX = "firefox-esr"
DISPLAY = ":1"
X11_SOCKETS = "/tmp/.X11-unix"
OPEN_COMMAND_ENV = "HEARTH_OPEN_URL_COMMAND"
TITLE_COMMAND_ENV = "HEARTH_WINDOW_TITLE_COMMAND"
XDOTOOL_TIMEOUT = 5.0
WINDOW_WAIT = 300.0  # seconds for the first window to map under software rendering
WINDOW_POLL = 0.5
STOP_WAIT = 10.0
# Titles of a window that has not painted a page yet.
BARE_TITLES = frozenset({"", "Mozilla Firefox", "Mozilla Firefox ESR", "Firefox", "Firefox ESR"})
# The warm blank page: its title says Firefox has painted, and is no sign-in page. It reloads
# itself every half second, so that rewritten to forward (FORWARD_PAGE) it sends this tab to
# the sign-in page with no second Firefox process started for the remoting.
BLANK_TITLE = "Hearth: ready"
BLANK_PAGE = (
    f"<!doctype html><meta charset=utf-8><title>{BLANK_TITLE}</title>"
    "<script>setTimeout(() => location.reload(), 500)</script>\n"
)
FORWARD_PAGE = (
    '<!doctype html><meta charset=utf-8><meta http-equiv="refresh" content="0; url={url}">'
    f"<title>{BLANK_TITLE}</title>\n"
)
TITLE_PROBE = ("xdotool", "search", "--onlyvisible", "--class", "firefox", "getwindowname")


def _xdotool(env: dict[str, str], *args: str) -> str | None:
    """xdotool's stdout, or None if it failed (no window yet, no X, no xdotool)."""
    try:
        done = subprocess.run(
            ["xdotool", *args], env=env, capture_output=True, text=True, timeout=XDOTOOL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def window_title(env: dict[str, str]) -> str | None:
    """The title of the first visible Firefox window, or None if there is none."""
    override = os.environ.get(TITLE_COMMAND_ENV)
    argv = shlex.split(override) if override else list(TITLE_PROBE)
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=XDOTOOL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.splitlines()
    return lines[0].strip() if lines else None


def is_ready(title: str | None) -> bool:
    """A page has painted its title: the window shows more than the browser's own name, and
    more than the warm blank page."""
    return title is not None and title.strip() not in BARE_TITLES and not blank_painted(title)


def blank_painted(title: str | None) -> bool:
    """The warm blank page shows: Firefox has started and painted, ahead of any login."""
    return title is not None and title.strip().startswith(BLANK_TITLE)


class Firefox:
    """One Firefox instance with its own profile directory, started on the first open()."""

    def __init__(self, profile: Path, home: Path, display: str = DISPLAY) -> None:
        self.profile = profile
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "DISPLAY": display,
            "MOZ_CRASHREPORTER_DISABLE": "1",
        }
        self.opened = False
        self._blank: Path | None = None  # the blank page shown, until it forwards
        self._process: subprocess.Popen[bytes] | None = None
        self._bus: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def display_ready(self) -> bool:
        """Whether the X server is up (its socket exists); with the test's recorder, always."""
        if os.environ.get(OPEN_COMMAND_ENV):
            return True
        number = self.env["DISPLAY"].lstrip(":").split(".")[0]
        return Path(X11_SOCKETS, f"X{number}").exists()

    def open_blank(self, page: Path) -> None:
        """Start Firefox on the blank page at `page` (written here); the next open() sends
        that tab on by rewriting the page."""
        fileio.write_atomic(page, BLANK_PAGE.encode(), 0o644)
        self.open(page.as_uri())
        self._blank = page

    def open(self, url: str) -> None:
        """Show `url`: forward the blank page to it, start Firefox on it, or hand it to the
        instance already running."""
        override = os.environ.get(OPEN_COMMAND_ENV)
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("this Firefox has been closed")
            running = self._process is not None and self._process.poll() is None
            if self._blank is not None and (override or running):
                forward = FORWARD_PAGE.format(url=html.escape(url, quote=True))
                fileio.write_atomic(self._blank, forward.encode(), 0o644)
                self._blank = None
                return
            if override or (running and self._bus is not None):
                # The test's recorder, or Firefox's remoting into the running instance (a new
                # tab): either ends at once; reap it.
                argv = (
                    [*shlex.split(override), url]
                    if override
                    else [FIREFOX, "--profile", str(self.profile), url]
                )
                threading.Thread(target=self._spawn(argv).wait, daemon=True).start()
            else:
                if running:  # no bus to hand the URL over: restart on it, same profile
                    _end(self._process)
                if self._bus is None:
                    self._start_bus()
                self.profile.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Sized to the display from the start: with no window manager, Firefox
                # otherwise keeps its default size after any later resize.
                size = (_xdotool(self.env, "getdisplaygeometry") or "").split()
                dims = ["--width", size[0], "--height", size[1]] if len(size) == 2 else []
                process = self._spawn(
                    [FIREFOX, "--new-instance", *dims, "--profile", str(self.profile), url]
                )
                self._process = process
                threading.Thread(target=self._fit_window, args=(process,), daemon=True).start()
            self.opened = True

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # Firefox's console may echo URLs with codes in them
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _start_bus(self) -> None:
        """A private D-Bus session bus. Firefox's remoting (`firefox-esr --profile P URL` into
        the instance running on P) goes over D-Bus, and the VM has no session bus: without
        one that command neither hands the URL over nor exits. Best effort: without
        dbus-daemon a second URL restarts Firefox instead."""
        socket = self.profile.with_name(f"{self.profile.name}.bus")
        try:
            bus = subprocess.Popen(
                [
                    "dbus-daemon",
                    "--session",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                    f"--address=unix:path={socket}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        except OSError:
            return
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()  # printed once listening; EOF if it failed
        if not address:
            bus.wait()
            return
        self._bus = bus
        self.env["DBUS_SESSION_BUS_ADDRESS"] = address

    def _fit_window(self, process: subprocess.Popen[bytes]) -> None:
        """Hold Firefox's window at 0,0 and the display's size until its first page has
        painted: with no window manager, Firefox may resize itself after it maps."""
        deadline = time.monotonic() + WINDOW_WAIT
        while process.poll() is None and time.monotonic() < deadline:
            found = (
                _xdotool(self.env, "search", "--onlyvisible", "--class", "firefox") or ""
            ).split()
            display = (_xdotool(self.env, "getdisplaygeometry") or "").split()
            if found and len(display) == 2:
                window = found[0]
                shell = _xdotool(self.env, "getwindowgeometry", "--shell", window) or ""
                geometry = dict(line.split("=", 1) for line in shell.split() if "=" in line)
                fits = [geometry.get(k) for k in ("X", "Y", "WIDTH", "HEIGHT")] == [
                    "0",
                    "0",
                    *display,
                ]
                if fits and is_ready(window_title(self.env)):
                    return
                if not fits:
                    _xdotool(
                        self.env, "windowmove", window, "0", "0", "windowsize", window, *display
                    )
            if self._closed.wait(WINDOW_POLL):
                return

    def status(self) -> protocol.FirefoxStatus:
        title = window_title(self.env) if self.opened else None
        return protocol.FirefoxStatus(self.opened, title, is_ready(title))

    def close(self) -> None:
        """End the instance and its bus, and delete the profile (it holds the sign-in's
        cookies)."""
        with self._lock:
            self._closed.set()
            for process in (self._process, self._bus):
                if process is not None:
                    _end(process)
            self._process = self._bus = None
        shutil.rmtree(self.profile, ignore_errors=True)
        self.profile.with_name(f"{self.profile.name}.bus").unlink(missing_ok=True)


def fresh_profile(run_dir: Path) -> Path:
    """A fresh Firefox profile directory's path: no cookies carry over between logins."""
    return run_dir / f"firefox-{secrets.token_hex(6)}"


class WarmFirefox:
    """Firefox started before any login on the blank page, for the next login's sign-in page
    (the controller's warm pool). It starts once the display is up, and has shown nothing
    but the blank page when a login takes it."""

    def __init__(self, run_dir: Path, home: Path, log: Callable[[str], None]) -> None:
        self.firefox = Firefox(fresh_profile(run_dir), home)
        self.page = run_dir / "blank.html"
        self.error: str | None = None
        self._log = log
        threading.Thread(target=self._start, name="warm-firefox", daemon=True).start()

    def _start(self) -> None:
        deadline = time.monotonic() + WINDOW_WAIT
        while not self.firefox.display_ready():
            if time.monotonic() > deadline:
                self.error = "the display did not come up"
                return
            time.sleep(WINDOW_POLL)
        try:
            self.firefox.open_blank(self.page)
        except OSError as e:
            self.error = f"cannot open Firefox: {e.strerror or e}"
        except RuntimeError:  # closed meanwhile: a login began before the display was up
            return
        self._log("warm Firefox started on the blank page")

    def status(self) -> protocol.WarmBrowser:
        status = self.firefox.status()
        return protocol.WarmBrowser(blank_painted(status.title), self.error, status)


def _end(process: subprocess.Popen[Any]) -> None:
    """SIGTERM a process group this module started; SIGKILL it if it outstays STOP_WAIT."""
    processes.signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        processes.signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_WAIT)
