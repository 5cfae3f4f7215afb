"""A provider login inside the browser VM: the CLI's own sign-in, run the way a person would.

The controller sends a spec (hearth.guest.protocol.LoginSpec: data only). The agent writes the
spec's pre-login files, then runs the login command under a PTY as root in HOME (so TUIs and
readline behave as in a terminal), with BROWSER, and an `xdg-open` first on PATH, pointing at
a wrapper around browser_shim.py that records the URL a CLI tries to open. A reader thread
turns the output into plain text (transcript.py: only a bounded tail is kept, and none of it
is ever logged; a failed login's error ends with its last lines, redacted),
finds the authorize URL the CLI prints, answers the spec's known prompts once each, and notes
its success markers. A CLI that shows no URL within the spec's url_timeout (a question the
spec does not know, a hang) is stopped then, not at login_timeout. Once the URL to show is
known (the one handed to BROWSER when the spec prefers it, else the printed one; each waits
a little for the other) Firefox opens it on the VNC display. The provider
redirects to the CLI's own callback on localhost; the CLI writes its credential files; the
controller fetches them from /credentials once the login has succeeded.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__:
    from . import browser_shim, fileio, firefox, processes, protocol
    from .transcript import Transcript, last_screen
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import browser_shim
    import fileio
    import firefox
    import processes
    import protocol
    from transcript import Transcript, last_screen

HOME_ENV = "HEARTH_LOGIN_HOME"
RUN_DIR_ENV = "HEARTH_RUN_DIR"
DEFAULT_HOME = "/root"

DEFAULT_RUN_DIR = "/run/hearth"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TERM = "xterm-256color"
# Wide, so a TUI (Gemini CLI's Ink) prints a long authorize URL on one line, not wrapped.
PTY_ROWS, PTY_COLUMNS = 50, 1000
READ_POLL = 0.2  # seconds between checks of the BROWSER file, deadlines and success
URL_GRACE = 5.0  # seconds to wait for the preferred URL once the other one is known
STOP_WAIT = 10.0  # seconds between SIGTERM and SIGKILL
MAX_CREDENTIAL_BYTES = 1024 * 1024

# Run in the child, which Popen's start_new_session made a session leader: make the PTY its
# controlling terminal, as a terminal emulator would, then become the CLI. A command that
# cannot be run ends with 127 and says why on the PTY, like a shell.
CTTY_EXEC = """\
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    print(f"{sys.argv[1]}: {e.strerror}", file=sys.stderr)
    sys.exit(127)
"""


def cli_home() -> Path:
    """The CLI user's HOME: where logins run and where a CLI VM's credentials live."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME))


class LoginBusy(Exception):
    """A login is still running; the agent runs one at a time."""


class NotReady(Exception):
    """The credentials cannot be served (yet); the message says why."""


# --- one login -----------------------------------------------------------------------------


class LoginSession:
    """One run of a provider's login command, from start to exit."""

    def __init__(
        self,
        spec: protocol.LoginSpec,
        home: Path,
        run_dir: Path,
        log: Callable[[str], None],
        browser: firefox.Firefox | None = None,
    ):
        """`browser`: a Firefox already running on the warm blank page, for the sign-in page;
        without one, the login starts its own."""
        self.spec = spec
        self.home = home
        self.run_dir = run_dir
        self.url_file = run_dir / "login" / "browser-urls"
        self.wrapper = run_dir / "browser"
        self.firefox = browser or firefox.Firefox(firefox.fresh_profile(run_dir), home)
        self.transcript = Transcript()
        self._log = log
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._started = 0.0
        self._stopping: str | None = None  # why the agent is ending the CLI
        self._stop_deadline = 0.0
        self._killed = False
        self._open_tried = False
        self._printed_at = self._browser_at = 0.0
        self.printed_url: str | None = None
        self.browser_url: str | None = None
        self.url: str | None = None
        self.answered: list[str] = []
        self.marker_seen = False
        self.exit_code: int | None = None
        self.success = False
        self.error: str | None = None

    def log(self, message: str) -> None:
        self._log(f"login {self.spec.name}: {message}")

    @property
    def finished(self) -> bool:
        with self._lock:
            return self.exit_code is not None

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        self._prepare()
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", PTY_ROWS, PTY_COLUMNS, 0, 0))
            self._process = subprocess.Popen(
                [sys.executable, "-E", "-s", "-S", "-c", CTTY_EXEC, *self.spec.login_argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.home,
                env=self._environment(),
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._started = time.monotonic()
        self.log(f"started (pid {self._process.pid})")
        threading.Thread(target=self._run, name=f"login-{self.spec.name}", daemon=True).start()

    def _prepare(self) -> None:
        """HOME with the pre-login files and without stale credentials; the BROWSER wrapper,
        also on PATH as xdg-open; an empty URL file."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.url_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.url_file.unlink(missing_ok=True)
        for relative in self.spec.credential_files:
            (self.home / relative).unlink(missing_ok=True)
        for relative, content in self.spec.pre_login_files.items():
            fileio.write_private(self.home / relative, content.encode())
        shim = Path(browser_shim.__file__).resolve()
        self.wrapper.write_text(
            "#!/bin/sh\n"
            "# Written by the Hearth agent: records the URL a CLI opens (see browser_shim.py).\n"
            f"{browser_shim.URL_FILE_ENV}={shlex.quote(str(self.url_file))} "
            f'exec {shlex.quote(sys.executable)} -E -s -S {shlex.quote(str(shim))} "$@"\n'
        )
        self.wrapper.chmod(0o700)
        xdg_open = self.run_dir / "bin" / "xdg-open"
        xdg_open.parent.mkdir(mode=0o700, exist_ok=True)
        xdg_open.unlink(missing_ok=True)
        xdg_open.symlink_to(self.wrapper)

    def _environment(self) -> dict[str, str]:
        """A minimal environment (clean_env: Gemini CLI falls back to a paste-a-code flow when
        it sees CI or DEBIAN_FRONTEND=noninteractive), or the agent's without its own HEARTH_*
        settings; the terminal, display and browser a person's session would have."""
        if self.spec.clean_env:
            env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
            env.setdefault("LANG", "C.UTF-8")
        env.update(
            PATH=f"{self.run_dir / 'bin'}:{env.get('PATH', SYSTEM_PATH)}",
            HOME=str(self.home),
            TERM=TERM,
            DISPLAY=firefox.DISPLAY,
            BROWSER=str(self.wrapper),
        )
        env.update(self.spec.login_env)
        return env

    # -- the reader thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._pump()
        except Exception as e:  # never leave a login "running" behind a dead reader
            self.log(f"reader failed: {type(e).__name__}")
            with self._lock:
                self.error = "the agent's reader failed"
            assert self._process is not None
            processes.signal_group(self._process.pid, signal.SIGKILL)
            self._process.wait()
        finally:
            os.close(self._master)
        self._finish()

    def _pump(self) -> None:
        """Read the PTY until the CLI has exited and its output is drained."""
        process = self._process
        assert process is not None
        readable = True
        while True:
            exited = process.poll() is not None
            if exited and not self._killed:
                # Whatever the CLI left running in its process group goes with it.
                processes.signal_group(process.pid, signal.SIGKILL)
                self._killed = True
            if readable:
                ready, _, _ = select.select([self._master], [], [], 0 if exited else READ_POLL)
            else:  # the PTY is closed but the CLI has not exited yet
                ready = []
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(READ_POLL)
            if ready:
                try:
                    data = os.read(self._master, 65536)
                except OSError:  # EIO: no process holds the PTY open any more
                    data = b""
                if data:
                    self._scan(self.transcript.feed(data), final=False)
                else:
                    readable = False
            elif exited:
                break
            self._tick(time.monotonic())
        self._scan(self.transcript.feed(b"", final=True), final=True)

    def _scan(self, window: str, final: bool) -> None:
        """Look for the URL, the prompts and the success markers in the newest text."""
        spec = self.spec
        with self._lock:
            if self.printed_url is None and (match := spec.url_pattern.search(window)):
                url = match.groupdict().get("url") or match.group(0)
                # A URL at the very end may continue in the next read.
                if (final or match.end() < len(window)) and browser_shim.is_web_url(url):
                    self.printed_url, self._printed_at = url, time.monotonic()
                    self.log("authorize URL printed")
            for number, (pattern, keys) in enumerate(spec.prompts, 1):
                if not final and pattern.pattern not in self.answered and pattern.search(window):
                    self.answered.append(pattern.pattern)
                    try:
                        os.write(self._master, keys.encode())
                    except OSError:  # the CLI has just exited
                        continue
                    self.log(f"answered prompt {number}")
            if not self.marker_seen and any(p.search(window) for p in spec.success_markers):
                self.marker_seen = True
                self.log("success marker seen")

    def _tick(self, now: float) -> None:
        """Everything that does not wait for output: the BROWSER file, opening Firefox,
        stopping a CLI that stays open after signing in, deadlines."""
        self._read_browser_url(now)
        self._choose_url(now)
        with self._lock:
            url = self.url if self._stopping is None and not self._open_tried else None
        # The agent may start before the VNC server: a Firefox started without its display
        # would exit at once, so the page waits for the display.
        if url is not None and self.firefox.display_ready():
            self._open_tried = True
            try:
                self.firefox.open(url)
                self.log("opened the sign-in page in Firefox")
            except OSError as e:
                with self._lock:
                    self.error = f"cannot open Firefox: {e.strerror or e}"
                self.log("cannot open Firefox")
        with self._lock:
            if self._stopping is None:
                if self.spec.stop_on_success and self.marker_seen and self._credentials_present():
                    self._stop("signed in", now)
                elif now - self._started > self.spec.login_timeout:
                    self.error = self._with_screen(
                        f"no sign-in within {self.spec.login_timeout:g}s"
                    )
                    self._stop("timed out", now)
                elif (
                    self.printed_url is None
                    and self.browser_url is None
                    and now - self._started > self.spec.url_timeout
                ):
                    # A question the spec does not answer, or a hang: fail now, not at
                    # login_timeout, and show what the CLI was asking.
                    self.error = self._with_screen(
                        f"the CLI showed no sign-in URL within {self.spec.url_timeout:g}s"
                    )
                    self._stop("no sign-in URL", now)
            elif now > self._stop_deadline and not self._killed:
                assert self._process is not None
                processes.signal_group(self._process.pid, signal.SIGKILL)
                self._killed = True

    def _read_browser_url(self, now: float) -> None:
        if self.browser_url is not None:
            return
        try:
            lines = self.url_file.read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return
        urls = [line for line in lines if browser_shim.is_web_url(line)]
        if urls:
            with self._lock:
                self.browser_url, self._browser_at = urls[0], now
            self.log("authorize URL handed to BROWSER")

    def _choose_url(self, now: float) -> None:
        """Settle the URL to open, once: the preferred one as soon as it is known, the other
        after URL_GRACE seconds without the preferred one."""
        with self._lock:
            if self.url is not None:
                return
            printed = (self.printed_url, self._printed_at)
            handed = (self.browser_url, self._browser_at)
            (preferred, _), (other, other_at) = (
                (handed, printed) if self.spec.browser_url_preferred else (printed, handed)
            )
            if preferred is not None:
                self.url = preferred
            elif other is not None and now - other_at >= URL_GRACE:
                self.url = other

    def _stop(self, reason: str, now: float) -> None:
        """SIGTERM the CLI's process group; _tick escalates to SIGKILL after STOP_WAIT.
        Called with the lock held."""
        assert self._process is not None
        self._stopping = reason
        self._stop_deadline = now + STOP_WAIT
        processes.signal_group(self._process.pid, signal.SIGTERM)
        self.log(f"stopping the CLI ({reason})")

    def _with_screen(self, error: str) -> str:
        """A failure of the CLI's, with what it showed last."""
        screen = last_screen(self.transcript.tail)
        return f"{error}; its last screen: {screen}" if screen else f"{error}; it printed nothing"

    def _credentials_present(self) -> bool:
        return all((self.home / p).is_file() for p in self.spec.credential_files)

    def _finish(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        with self._lock:
            present = self._credentials_present()
            clean_exit = code == 0 or self._stopping == "signed in"
            self.success = self.marker_seen and present and clean_exit
            if self.success:
                self.error = None
            elif self.error is None:
                if not clean_exit:
                    error = f"the login command exited with {code}"
                elif not self.marker_seen:
                    error = "the login command exited without its success message"
                else:
                    error = "the login command did not write all its credential files"
                self.error = self._with_screen(error)
            self.exit_code = code
        self.log(f"exited with {code}: {'success' if self.success else 'failed'}")

    # -- requests ------------------------------------------------------------------------

    def cancel(self) -> None:
        with self._lock:
            if self.exit_code is None and self._stopping is None:
                self.error = "cancelled"
                self._stop("cancelled", time.monotonic())

    def status(self) -> protocol.LoginStatus:
        with self._lock:
            if self.exit_code is not None:
                state = "exited"
            elif self.url is None and self.printed_url is None and self.browser_url is None:
                state = "starting"
            else:
                state = "running"
            fields = {
                "provider": self.spec.name,
                "state": state,
                "url": self.url,
                "printed_url": self.printed_url,
                "browser_url": self.browser_url,
                "prompts_answered": tuple(self.answered),
                "success_marker_seen": self.marker_seen,
                "exited": self.exit_code is not None,
                "exit_code": self.exit_code,
                "success": self.success,
                "error": self.error,
            }
        # Outside the lock: the window title comes from a subprocess.
        return protocol.LoginStatus(**fields, firefox=self.firefox.status())

    def credentials(self) -> dict[str, bytes]:
        """The credential files by path under HOME, once the login has succeeded."""
        with self._lock:
            if self.exit_code is None:
                raise NotReady("the login is still running")
            if not self.success:
                raise NotReady(f"the login did not succeed: {self.error}")
        files = {}
        for relative in self.spec.credential_files:
            path = self.home / relative
            try:
                with path.open("rb") as f:
                    content = f.read(MAX_CREDENTIAL_BYTES + 1)
            except FileNotFoundError:
                raise NotReady(f"{relative} has gone since the login") from None
            if len(content) > MAX_CREDENTIAL_BYTES:
                raise NotReady(f"{relative} is larger than {MAX_CREDENTIAL_BYTES} bytes")
            files[relative] = content
        return files


class LoginManager:
    """The agent's one login at a time, the Firefox that /open-url uses without one, and the
    warm Firefox the next login takes."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.home = cli_home()
        self.run_dir = Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
        self._log = log
        self._lock = threading.Lock()
        self._session: LoginSession | None = None
        self._browser: firefox.Firefox | None = None
        self._warm: firefox.WarmFirefox | None = None

    @property
    def session(self) -> LoginSession | None:
        with self._lock:
            return self._session

    def start(self, spec: protocol.LoginSpec) -> LoginSession:
        """Start a login (replacing a finished one); LoginBusy while one runs."""
        with self._lock:
            if self._session is not None and not self._session.finished:
                raise LoginBusy(f"the {self._session.spec.name} login is still running")
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            warm = self._warm.firefox if self._warm is not None else None
            if warm is not None and not warm.opened:  # still waiting for the display
                warm.close()
                warm = None
            for old in (self._session.firefox if self._session else None, self._browser):
                if old is not None:
                    old.close()
            self._browser = self._warm = None
            session = LoginSession(spec, self.home, self.run_dir, self._log, browser=warm)
            session.start()
            if warm is not None:
                session.log("the warm Firefox will show the sign-in page")
            self._session = session
            return session

    def warm(self) -> firefox.WarmFirefox:
        """Start Firefox on the blank page for the next login (once; again returns the same);
        LoginBusy once a login has started, as its Firefox is the login's own."""
        with self._lock:
            if self._session is not None:
                raise LoginBusy("a login has started: no Firefox is kept warm for another")
            if self._warm is None:
                self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._warm = firefox.WarmFirefox(self.run_dir, self.home, self._log)
            return self._warm

    @property
    def warm_firefox(self) -> firefox.WarmFirefox | None:
        with self._lock:
            return self._warm

    def open_url(self, url: str) -> None:
        """Show `url` in the login's Firefox, or in one of its own when no login ran yet."""
        with self._lock:
            if self._session is not None:
                browser = self._session.firefox
            else:
                if self._browser is None:
                    self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    self._browser = firefox.Firefox(firefox.fresh_profile(self.run_dir), self.home)
                browser = self._browser
        browser.open(url)
