"""The warm pool: browser VMs prepared ahead of sign-ins, so that a sign-in skips the boot
and Firefox's first paint (under emulation about 50 s of its wait).

Each pool VM boots as a cold one does, has Firefox painted on the blank page (or, for
`pool_providers`, its provider's login started up to the authorize page), and is then
hibernated rather than paused: measured, a paused VM holds 2 GiB of RAM and a hibernated one
only disk, and the page's load sets the pace either way. A session takes one with one
conditional UPDATE and resumes it; the VM is the session's from then on. The pool's VMs are
rows with `pool` set, so the pool outlives the controller; a refiller thread keeps it full,
never booting while a user's VM boots. The design, and the measurement behind it:
docs/warm-pool.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from hearth.config import BROWSER_IMAGE, Settings
from hearth.core.capacity import Capacity, Reservation
from hearth.core.failures import reason as failure_reason
from hearth.core.sign_in_vm import authorize_page_shown, browser_seed, login_request
from hearth.core.vms import LIVE_STATES, VmManager, image_build
from hearth.store.models import Vm, VmState, utcnow
from hearth.waiting import wait_for

log = logging.getLogger(__name__)

WARMING = "warming"  # being booted and painted
WARM = "warm"  # hibernated, painted, waiting for a sign-in
PAINT_TIMEOUT = 300.0  # seconds for Firefox's first paint under software rendering
IDLE_PASS = 30.0  # seconds between refill passes with nothing to do (age and image checks)
BUSY_PASS = 2.0  # seconds between refill passes while another VM boots or resumes
STARTING = (VmState.requested, VmState.booting, VmState.resuming)
SIGN_IN_PAGE_TIMEOUT = 600.0  # seconds for a provider's CLI to start and its page to load


@dataclass(frozen=True)
class Taken:
    """A pool VM claimed for a sign-in, still hibernated."""

    vm_id: str
    login_started: bool  # prepared for the session's provider: its sign-in page shows


class WarmPool:
    def __init__(
        self, settings: Settings, vms: VmManager, capacity: Capacity, image: str = BROWSER_IMAGE
    ):
        self.settings = settings
        self.vms = vms
        self.capacity = capacity  # a pool VM boots only on room no one else wants
        self.image = image
        self.size = settings.pool_browser
        # What the pool keeps `size` VMs of: for each provider in pool_providers, VMs with its
        # sign-in page shown; without, VMs on the blank page (None), for any provider.
        self.kinds: tuple[str | None, ...] = tuple(settings.pool_providers) or (None,)
        self._wake = threading.Event()
        self._last_start: float | None = None  # monotonic seconds of the last boot or take

    # -- a session's side ----------------------------------------------------------------

    def take(self, provider: str) -> Taken | None:
        """Claim a warm VM for a sign-in to `provider`: the oldest current one prepared for
        it, else one on the blank page; None when the pool has neither. The refiller then
        boots its replacement."""
        usable = [
            vm
            for vm in self._members(WARM)
            if vm.state == VmState.hibernated
            and vm.pool_provider in (provider, None)
            and not self._stale(vm)
        ]
        usable.sort(key=lambda vm: vm.pool_provider is None)  # stable: oldest first in each
        taken = next(
            (Taken(vm.id, vm.pool_provider is not None) for vm in usable if self._claim(vm.id)),
            None,
        )
        if taken is not None:
            # A take counts as a boot for the rate limit: the taken VM's sign-in has the CPU
            # to itself for its first seconds (under emulation a boot beside it slowed its
            # way to the authorize page from seconds to over a minute).
            self._last_start = time.monotonic()
        self._wake.set()  # after the claim, so that the refiller counts it gone
        return taken

    def wake(self, vm_id: str) -> Vm:
        """Resume a taken VM until its agent answers with the guest's clock set; VmError when
        it does not (the VM is then the caller's to destroy)."""
        return self.vms.resume(vm_id)

    # -- keeping it full -------------------------------------------------------------------

    def start(self, stop: threading.Event) -> threading.Thread:
        """The refiller: a daemon thread until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    delay = self.refill()
                except Exception as e:  # noqa: BLE001 - logged; the next pass tries again
                    log.warning("warm pool refill failed: %s", failure_reason(e))
                    delay = IDLE_PASS
                self._wake.wait(delay)
                self._wake.clear()

        def wake_on_stop() -> None:
            stop.wait()
            self._wake.set()

        threading.Thread(target=wake_on_stop, daemon=True, name="warm-pool-stop").start()
        thread = threading.Thread(target=loop, daemon=True, name="warm-pool")
        thread.start()
        return thread

    def refill(self) -> float:
        """One pass: replace stale VMs, and start one boot if the pool is short and the rate
        limit allows; the seconds until the next pass is due."""
        self.drop_stale()
        if self.size == 0:
            return IDLE_PASS
        kept = Counter(vm.pool_provider for vm in self._members(WARM, WARMING))
        short = {kind: self.size - kept[kind] for kind in self.kinds if kept[kind] < self.size}
        if not short:
            return IDLE_PASS
        if self._last_start is not None:
            due = self._last_start + self.settings.pool_boot_interval - time.monotonic()
            if due > 0:
                return due
        if self._others_starting():
            return BUSY_PASS
        reservation = self.capacity.try_reserve(self.image)
        if reservation is None:  # the pool yields to sign-ins and prompts
            return IDLE_PASS
        self._last_start = time.monotonic()
        kind = max(short, key=short.__getitem__)  # the most short; the first of a tie
        vm_id = self._boot(reservation, kind)
        threading.Thread(
            target=self._prepare, args=(vm_id, kind), daemon=True, name=f"warm-{vm_id}"
        ).start()
        return self.settings.pool_boot_interval if sum(short.values()) > 1 else IDLE_PASS

    def drop_stale(self) -> list[str]:
        """Destroy warm VMs past the maximum age, from an image since rebuilt, or prepared
        for what the pool no longer keeps; their ids."""
        dropped = [vm.id for vm in self._members(WARM) if self._stale(vm) and self._claim(vm.id)]
        for vm_id in dropped:
            self.vms.destroy(vm_id)
        if dropped:
            self._wake.set()
        return dropped

    def recover(self) -> list[str]:
        """At start-up, after the reconciler: destroy the pool VMs a dead controller left half
        prepared, or that the reconciler could not keep hibernated; their ids. The warm ones
        with their snapshot are the pool still."""
        gone = [
            vm.id
            for vm in self._members(WARM, WARMING)
            if vm.pool == WARMING or vm.state != VmState.hibernated
        ]
        for vm_id in gone:
            self.vms.update(vm_id, pool=None)
            self.vms.destroy(vm_id)
        return gone

    # -- one pool VM -----------------------------------------------------------------------

    def _boot(self, reservation: Reservation, kind: str | None) -> str:
        """Record a new pool VM on the room reserved for it (booted by _prepare); its id.
        Hibernated, it costs nothing against the capacity; a take wakes it on the session's."""
        try:
            vm_id = self.capacity.record(reservation, self.image)
            self.vms.update(vm_id, pool=WARMING, pool_provider=kind)
        finally:
            self.capacity.release(reservation)
        return vm_id

    def _prepare(self, vm_id: str, provider: str | None) -> None:
        """Boot the VM, paint Firefox's blank page, start `provider`'s login when the VM is
        for one and wait for its sign-in page, hibernate the VM, and offer it; a VM that does
        not get there is destroyed."""
        try:
            self.vms.finish_create(vm_id, seed_extras=browser_seed())
            with self.vms.agent(self.vms.get(vm_id)) as agent:
                agent.warm_browser()

                def painted() -> bool:
                    status = agent.warm_browser_status()
                    if status.error:
                        raise RuntimeError(f"the warm Firefox failed: {status.error}")
                    return status.painted

                poll = self.settings.agent_poll_interval
                wait_for(painted, PAINT_TIMEOUT, "Firefox to paint the blank page", interval=poll)
                if provider is not None:
                    agent.start_login(login_request(self.settings, self.vms, provider))
                    wait_for(
                        lambda: authorize_page_shown(agent.login_status()),
                        SIGN_IN_PAGE_TIMEOUT,
                        f"Firefox to show the {provider} sign-in page",
                        interval=poll,
                    )
            self.vms.hibernate(vm_id)
            self.vms.update(vm_id, pool=WARM)
        except Exception as e:  # noqa: BLE001 - logged; the refiller boots another
            log.warning("warm pool VM %s was not prepared: %s", vm_id, failure_reason(e))
            self.vms.update(vm_id, pool=None)
            self.vms.destroy(vm_id)
        self._wake.set()

    def _claim(self, vm_id: str) -> bool:
        """Take a warm VM out of the pool; False when another claim won it first."""
        with self.vms.db.session() as s:
            claimed = s.execute(
                update(Vm).where(Vm.id == vm_id, Vm.pool == WARM).values(pool=None)
            ).rowcount
            s.commit()
        return bool(claimed)

    def _stale(self, vm: Vm) -> bool:
        too_old = utcnow() - vm.created_at > timedelta(seconds=self.settings.pool_max_age)
        rebuilt = vm.image_build != image_build(self.settings, self.image)
        return too_old or rebuilt or vm.pool_provider not in self.kinds

    def _others_starting(self) -> bool:
        """Whether a VM that is not the pool's (a sign-in's, a prompt's) boots or resumes."""
        with self.vms.db.session() as s:
            starting = select(Vm.id).where(Vm.state.in_(STARTING), Vm.pool.is_(None)).limit(1)
            return s.scalars(starting).first() is not None

    def _members(self, *marks: str) -> list[Vm]:
        """The pool's VMs with one of `marks`, oldest first."""
        with self.vms.db.session() as s:
            return list(
                s.scalars(
                    select(Vm)
                    .where(Vm.image == self.image, Vm.pool.in_(marks), Vm.state.in_(LIVE_STATES))
                    .order_by(Vm.created_at, Vm.id)
                )
            )
