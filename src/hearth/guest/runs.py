"""Prompt runs in the CLI VM: one CLI process per run, its output streamed as it comes.

A run is the CLI (the provider's prompt command) started as root in HOME, in a session of
its own, with stdin /dev/null and stdout and stderr on separate pipes. A reader thread per
pipe decodes UTF-8 incrementally (a character split across reads is never broken) and
queues output events; a waiter thread reaps the CLI, kills whatever it left in its process
group, and queues the exit event with the digest of the provider's credential files, so the
controller learns whether the run refreshed them. The queue is read by the one stream the
POST /runs request answers with; when that client goes away the run is stopped: a CLI must
not keep running (and spending a subscription) for nobody.

Output is never logged: it is the user's conversation. Standard library only.
"""

from __future__ import annotations

import codecs
import json
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO

if __package__:
    from . import custody, login, processes, protocol
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import custody
    import login
    import processes
    import protocol

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a run's process group
DRAIN_WAIT = 5.0  # seconds to wait for the pipes' end once the CLI has exited
IDLE_CHECK = 1.0  # seconds of silence after which the stream checks its client is there
KEEP_FINISHED = 100  # finished runs whose status stays available
READ_SIZE = 65536


class Run:
    """One CLI process from start to exit, its events queued for the stream."""

    def __init__(self, request: protocol.RunRequest, log: Callable[[str], None]) -> None:
        self.id = secrets.token_hex(16)
        self.request = request
        self.events: queue.Queue[protocol.RunEvent] = queue.Queue()
        self.finished = threading.Event()
        self._log = log
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._stopping = False
        self._timers: list[threading.Timer] = []
        self.cancelled = False
        self.timed_out = False
        self.exit_code: int | None = None
        self.signal: str | None = None
        self.duration: float | None = None

    def log(self, message: str) -> None:
        self._log(f"run {self.id}: {message}")

    def start(self, home: Path) -> None:
        env = {"PATH": login.SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}
        env.update(self.request.env)
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        process = subprocess.Popen(
            self.request.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=home,
            env=env,
            start_new_session=True,
        )
        self._process, self._started = process, time.monotonic()
        self.log(f"started (pid {process.pid})")
        self.events.put(protocol.RunStarted(self.id, process.pid))
        assert process.stdout is not None and process.stderr is not None
        readers = [
            threading.Thread(target=self._read, args=(pipe, name), daemon=True)
            for pipe, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        self._after(self.request.timeout, self._time_out)
        threading.Thread(target=self._wait, args=(readers,), daemon=True).start()

    def _read(self, pipe: IO[bytes], stream: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with pipe:
            while chunk := os.read(pipe.fileno(), READ_SIZE):  # whatever has arrived
                if text := decoder.decode(chunk):
                    self.events.put(protocol.RunOutput(stream, text))
            if text := decoder.decode(b"", final=True):
                self.events.put(protocol.RunOutput(stream, text))

    def _wait(self, readers: list[threading.Thread]) -> None:
        assert self._process is not None
        code = self._process.wait()
        # Whatever the CLI left running in its process group goes with it.
        processes.signal_group(self._process.pid, signal.SIGKILL)
        # A descendant that left the group may still hold a pipe: its output is not waited
        # for beyond DRAIN_WAIT.
        deadline = time.monotonic() + DRAIN_WAIT
        for reader in readers:
            reader.join(max(deadline - time.monotonic(), 0))
        credentials_digest = None
        if self.request.provider is not None:
            try:
                credentials_digest = custody.current_digest(self.request.provider)
            except OSError as e:
                self.log(f"cannot digest the {self.request.provider} credentials: {e}")
        with self._lock:
            self.duration = time.monotonic() - self._started
            if code < 0:
                self.signal = signal.Signals(-code).name
            else:
                self.exit_code = code
            for timer in self._timers:
                timer.cancel()
            self.finished.set()
        self.log(f"exited with {self.signal or code} after {self.duration:.1f}s")
        self.events.put(
            protocol.RunExit(
                run_id=self.id,
                exit_code=self.exit_code,
                signal=self.signal,
                duration=self.duration,
                cancelled=self.cancelled,
                timed_out=self.timed_out,
                credentials_digest=credentials_digest,
            )
        )

    # -- stopping ------------------------------------------------------------------------

    def _after(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _stop(self, why: str) -> None:
        """SIGTERM the process group, SIGKILL after KILL_GRACE. Called once, with the lock
        held, while the run is not finished."""
        assert self._process is not None
        self._stopping = True
        self.log(f"stopping ({why})")
        processes.signal_group(self._process.pid, signal.SIGTERM)
        self._after(KILL_GRACE, self._kill)

    def _kill(self) -> None:
        assert self._process is not None
        with self._lock:
            if not self.finished.is_set():
                processes.signal_group(self._process.pid, signal.SIGKILL)

    def _time_out(self) -> None:
        with self._lock:
            if not self.finished.is_set() and not self._stopping:
                self.timed_out = True
                self._stop(f"no exit within {self.request.timeout:g}s")

    def cancel(self, why: str = "cancelled") -> None:
        """Stop the run (a finished one is left as it is); its exit says cancelled."""
        with self._lock:
            if not self.finished.is_set() and not self._stopping:
                self.cancelled = True
                self._stop(why)

    def status(self) -> protocol.RunStatus:
        with self._lock:
            running = not self.finished.is_set()
            duration = time.monotonic() - self._started if running else self.duration
            assert duration is not None  # set before the run is finished
            return protocol.RunStatus(
                run_id=self.id,
                running=running,
                exit_code=self.exit_code,
                signal=self.signal,
                cancelled=self.cancelled,
                timed_out=self.timed_out,
                duration=duration,
            )


class EventStream:
    """A run's events as NDJSON lines, for http_api.Stream. While the CLI is silent it yields
    b"" every IDLE_CHECK seconds, so the server can notice a client that has gone; closing
    the stream before the exit event stops the run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._done = False

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        try:
            event = self.run.events.get(timeout=IDLE_CHECK)
        except queue.Empty:
            return b""
        self._done = isinstance(event, protocol.RunExit)
        return json.dumps(event.to_json()).encode() + b"\n"

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.run.cancel("its client went away")


class RunManager:
    """The agent's runs: any number at a time, and the last KEEP_FINISHED finished ones."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def start(self, request: protocol.RunRequest) -> Run:
        """Start a run; OSError when the program cannot be started."""
        run = Run(request, self._log)
        run.start(login.cli_home())
        with self._lock:
            self._runs[run.id] = run
            finished = [key for key, r in self._runs.items() if r.finished.is_set()]
            for key in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
                del self._runs[key]
        return run

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)
