"""Prompts: one run of a user's CLI in their CLI VM, streamed as it happens and kept as history.

`stream` is a blocking generator of (event, data) pairs, in the order the API sends them as
Server-Sent Events: `connected`, then `output` chunks as the CLI prints them, then `done` or
`error`. The record in the database follows along (output flushed as it grows), so
`GET /api/prompts/{id}` and the history see the same run. A cancel, through the API or
because the client went away, stops the CLI in the VM and says why in the record.

Before `connected`, the stream makes sure the user's VM can wake: with no room for it
(hearth.core.capacity) the generator raises NoCapacity instead, so the API answers 503.
A user runs at most `max_prompts_per_user` prompts at once (TooManyPrompts beyond).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select

from hearth import metrics, providers
from hearth.config import Settings
from hearth.core import CoreError, webhooks
from hearth.core.capacity import NoCapacity
from hearth.core.cli_vms import CliVms, RunEnd, UnknownUser
from hearth.core.failures import reason as failure_reason
from hearth.core.stopping import ControllerStopping
from hearth.guest.protocol import RunOutput, RunStarted
from hearth.store.db import Database
from hearth.store.models import Prompt, PromptStatus, utcnow
from hearth.waiting import Timeout, wait_for

MAX_STORED_OUTPUT = 1_000_000  # characters of output kept in the record
FLUSH_EVERY = 1.0  # seconds between writes of a running prompt's output to its record
CANCEL_SETTLE = 10.0  # seconds a cancelled run takes to end (the agent's SIGTERM, then SIGKILL)


class NoCredentials(CoreError, LookupError):
    """The user has no credentials for that provider: they must sign in first."""

    http_status = 409


class TooManyPrompts(CoreError):
    """The user runs as many prompts at once as they may."""

    http_status = 429


@dataclass
class _Live:
    """A prompt running in this process: where, and whether it was asked to stop."""

    vm_id: str | None = None
    run_id: str | None = None
    cancel_reason: str | None = None


class Prompts:
    def __init__(self, settings: Settings, db: Database, cli_vms: CliVms):
        self.settings = settings
        self.db = db
        self.cli_vms = cli_vms
        self._guard = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._stopping = False

    # -- API-facing --------------------------------------------------------------------------

    def create(self, user_id: str, provider: str, prompt: str) -> Prompt:
        """Record a prompt to run; refuses unknown providers, users and missing credentials."""
        spec = providers.get(provider)
        if not spec.prompt_argv:
            raise ValueError(f"provider {provider!r} has no prompt command")
        if self.cli_vms.credentials.info(user_id, provider) is None:
            if not self.cli_vms.known(user_id):
                raise UnknownUser(f"unknown user {user_id!r}")
            raise NoCredentials(
                f"user {user_id!r} has no {provider} credentials: sign in "
                "first (POST /api/auth/start)"
            )
        record = Prompt(
            id=uuid.uuid4().hex,
            user_id=user_id,
            provider=provider,
            prompt=prompt,
            status=PromptStatus.running,
            output="",
        )
        # One at a time: a stop() between the check and the record would miss it, and two
        # prompts of one user would both find room under the user's limit.
        with self._guard:
            if self._stopping:
                raise ControllerStopping(
                    "the controller is stopping: no prompt starts now; send it again once "
                    "the controller is back",
                    self.settings.shutdown_grace,
                )
            with self.db.session() as s:
                running = len(self._running(s, user_id))
                if running >= self.settings.max_prompts_per_user:
                    metrics.admission_refused(metrics.TOO_MANY_PROMPTS)
                    raise TooManyPrompts(
                        f"user {user_id!r} runs {running} prompts already, the most at once "
                        f"(max_prompts_per_user): wait for one to end"
                    )
                s.add(record)
                s.commit()
            self._live[record.id] = _Live()
        return record

    @staticmethod
    def _running(s, user_id: str) -> list[str]:
        return list(
            s.scalars(
                select(Prompt.id).where(
                    Prompt.user_id == user_id, Prompt.status == PromptStatus.running
                )
            )
        )

    def get(self, prompt_id: str) -> Prompt | None:
        with self.db.session() as s:
            return s.get(Prompt, prompt_id)

    def history(self, user_id: str, limit: int = 50) -> list[Prompt]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Prompt)
                    .where(Prompt.user_id == user_id)
                    .order_by(Prompt.created_at.desc())
                    .limit(limit)
                )
            )

    def cancel(self, prompt_id: str, reason: str = "cancelled through the API") -> bool:
        """Stop a running prompt; False if it is not running here."""
        with self._guard:
            live = self._live.get(prompt_id)
            if live is None:
                return False
            live.cancel_reason = live.cancel_reason or reason
            vm_id, run_id = live.vm_id, live.run_id
        if run_id is not None:  # not started yet: the run is stopped as soon as it starts
            with self.cli_vms.vms.agent(self.cli_vms.vms.get(vm_id)) as agent:
                agent.cancel_run(run_id)
        return True

    def stop_taking(self) -> None:
        """The controller is stopping: create() refuses from now on."""
        with self._guard:
            self._stopping = True

    def drain(self, deadline: float) -> list[str]:
        """Let the running prompts finish until `deadline` (time.monotonic()), then cancel
        those still running and wait for their runs to end; the ids cut short."""
        if self._wait_idle(deadline):
            return []
        with self._guard:
            late = list(self._live)
        grace = self.settings.shutdown_grace
        for prompt_id in late:
            self.cancel(prompt_id, f"the controller stopped ({grace:.0f} s after it was asked to)")
        self._wait_idle(time.monotonic() + CANCEL_SETTLE)
        return late

    def _wait_idle(self, deadline: float) -> bool:
        def idle() -> bool:
            with self._guard:
                return not self._live

        try:
            wait_for(idle, max(0.0, deadline - time.monotonic()), "the running prompts")
        except Timeout:
            return False
        return True

    def recover(self) -> list[str]:
        """At start-up: prompts that were running under the last controller ended with it
        (their CLI stopped when its stream to that controller broke)."""
        with self.db.session() as s:
            stale = list(s.scalars(select(Prompt.id).where(Prompt.status == PromptStatus.running)))
        for prompt_id in stale:
            self._finish(
                prompt_id,
                PromptStatus.failed,
                error="the controller restarted while the prompt ran",
            )
        return stale

    # -- the run -----------------------------------------------------------------------------

    def stream(self, prompt_id: str) -> Iterator[tuple[str, dict]]:
        """Run a created prompt, yielding its events. Close it early to cancel the run.
        NoCapacity before any event when the user's VM cannot wake (the prompt then ends
        failed, with why)."""
        record = self.get(prompt_id)
        spec = providers.get(record.provider)
        started = time.monotonic()
        output = _Output()
        ended = False  # the outcome is recorded and being told: a close now changes nothing
        try:
            admission = self.cli_vms.admit(record.user_id)
        except NoCapacity as e:
            metrics.admission_refused(metrics.NO_CLI_VM_ROOM)
            self._finish(prompt_id, PromptStatus.failed, error=failure_reason(e))
            with self._guard:
                self._live.pop(prompt_id, None)
            raise
        try:
            yield "connected", {"prompt_id": prompt_id, "provider": record.provider}
            with self.cli_vms.using(record.user_id, record.provider, admission) as vm:
                self.db.update(Prompt, prompt_id, vm_id=vm.id)
                self._live_of(prompt_id).vm_id = vm.id
                for event in self.cli_vms.run(
                    vm,
                    record.user_id,
                    record.provider,
                    spec.prompt_command(record.prompt),
                    self.settings.prompt_timeout,
                ):
                    if isinstance(event, RunStarted):
                        self._started(prompt_id, event.run_id)
                    elif isinstance(event, RunOutput):
                        if output.add(event.data, time.monotonic() - started):
                            self.db.update(
                                Prompt,
                                prompt_id,
                                output=output.text,
                                first_output_seconds=output.first_at,
                            )
                        yield "output", {"stream": event.stream, "data": event.data}
                    elif isinstance(event, RunEnd):
                        done = self._ended(prompt_id, event, output, time.monotonic() - started)
                        ended = True
                        yield "done", done
                        return
            raise RuntimeError("the agent's stream ended before the CLI exited")
        except GeneratorExit:  # closed by its reader: nobody is left to read the output
            if not ended:
                self.cancel(prompt_id, "the client disconnected")
                self._finish(
                    prompt_id,
                    PromptStatus.cancelled,
                    error="the client disconnected",
                    output=output,
                )
            raise
        except Exception as e:  # noqa: BLE001 - any failure ends the prompt, with its reason
            reason = failure_reason(e)
            self._finish(prompt_id, PromptStatus.failed, error=reason, output=output)
            yield "error", {"reason": reason}
        finally:
            self.cli_vms.release(admission)  # if it never reached using()
            with self._guard:
                self._live.pop(prompt_id, None)

    def _live_of(self, prompt_id: str) -> _Live:
        with self._guard:
            return self._live.setdefault(prompt_id, _Live())

    def _started(self, prompt_id: str, run_id: str) -> None:
        live = self._live_of(prompt_id)
        live.run_id = run_id
        if live.cancel_reason:  # asked to stop before the run existed
            self.cancel(prompt_id)

    def _ended(self, prompt_id: str, end: RunEnd, output: _Output, seconds: float) -> dict:
        """The run's outcome: cancelled (asked to, or too long), failed because the provider
        refused the credentials (the app must have the user sign in again), or completed
        with the CLI's exit code."""
        reason = self._live_of(prompt_id).cancel_reason
        if end.exit.timed_out:
            reason = f"the CLI ran longer than {self.settings.prompt_timeout:.0f} s"
        if end.exit.cancelled or end.exit.timed_out:
            status = PromptStatus.cancelled
        elif refused := end.refused:
            status = PromptStatus.failed
            reason = (
                f"the provider refused the stored credentials ({refused}): the user "
                "must sign in again (POST /api/auth/start)"
            )
        else:
            status, reason = PromptStatus.completed, None
        self._finish(
            prompt_id,
            status,
            output=output,
            exit_code=end.exit.exit_code,
            error=reason,
            duration=seconds,
        )
        return {
            "prompt_id": prompt_id,
            "status": status,
            "exit_code": end.exit.exit_code,
            "duration": round(seconds, 3),
            "credentials": "updated" if end.credentials_updated else "unchanged",
            **({"reason": reason} if reason else {}),
        }

    def _finish(
        self,
        prompt_id: str,
        status: PromptStatus,
        error: str | None = None,
        output: _Output | None = None,
        exit_code: int | None = None,
        duration: float | None = None,
    ) -> None:
        fields = {
            "status": status,
            "error": error,
            "exit_code": exit_code,
            "duration_seconds": duration,
            "finished_at": utcnow(),
        }
        if output is not None:
            fields.update(output=output.text, first_output_seconds=output.first_at)
        with self.db.session() as s:
            prompt = s.get(Prompt, prompt_id)
            for name, value in fields.items():
                setattr(prompt, name, value)
            webhooks.prompt_done(s, prompt)
            s.commit()
        metrics.prompt_ended(prompt)


class _Output:
    """A prompt's output as it grows, capped, and whether it is time to write it down."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self.first_at: float | None = None
        self._flushed_at = 0.0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, data: str, at: float) -> bool:
        """Keep `data` (within the cap); True when the record is due an update."""
        if self.first_at is None:
            self.first_at = at
        room = MAX_STORED_OUTPUT - self._size
        if room > 0:
            self._parts.append(data[:room])
            self._size += min(len(data), room)
        if at - self._flushed_at >= FLUSH_EVERY or self.first_at == at:
            self._flushed_at = at
            return True
        return False
