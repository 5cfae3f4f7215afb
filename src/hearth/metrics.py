"""Prometheus metrics: what happened (counters and histograms, recorded where it happens by
the one-line hooks below) and what is (gauges, computed from the database at each scrape).

Events are counted per process, in metrics of this module that belong to no registry:
`hearth serve` runs one controller per process, and the recording sites (a session's
thread, a plan's step, the egress audit's writer) would otherwise each need a handle
threaded through their constructors. A scrape reads `registry(ctl)`: those metrics plus
the state of that controller's database, so several controllers in one process (tests) get
registries of their own that never meet the global default's; their events add up, which
is what `reset` is for. Current state is never incremented and decremented, so it cannot
drift from the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from hearth.config import host_port
from hearth.net import NetworkError
from hearth.store.models import AuthSession, AuthSessionStatus, Prompt, Vm, VmState, utcnow

if TYPE_CHECKING:
    from hearth.core.runtime import Controller

disable_created_metrics()  # no `_created` series beside each counter and histogram: noise

BOOT_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
RESUME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
SIGN_IN_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 900, 1800)
PROMPT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
QUEUE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800)
MIB = 1024 * 1024

SIGN_INS = Counter(
    "hearth_sign_ins",
    "Sign-ins ended, by provider and outcome",
    ["provider", "outcome"],
    registry=None,
)
SIGN_IN_SECONDS = Histogram(
    "hearth_sign_in_duration_seconds",
    "Seconds from a sign-in's start to its end, by provider and outcome",
    ["provider", "outcome"],
    buckets=SIGN_IN_BUCKETS,
    registry=None,
)
BOOT_SECONDS = Histogram(
    "hearth_vm_boot_seconds",
    "Seconds from a VM's VMM start to its agent's first answer, by image and VMM",
    ["image", "vmm"],
    buckets=BOOT_BUCKETS,
    registry=None,
)
RESUME_SECONDS = Histogram(
    "hearth_vm_resume_seconds",
    "Seconds from a hibernated VM's restore to its agent's first answer, by image and VMM",
    ["image", "vmm"],
    buckets=RESUME_BUCKETS,
    registry=None,
)
PROMPTS = Counter(
    "hearth_prompts",
    "Prompts ended, by provider and outcome",
    ["provider", "outcome"],
    registry=None,
)
PROMPT_SECONDS = Histogram(
    "hearth_prompt_duration_seconds",
    "Seconds from a prompt's request to its end, by provider and outcome",
    ["provider", "outcome"],
    buckets=PROMPT_BUCKETS,
    registry=None,
)
WRITE_BACKS = Counter(
    "hearth_credential_refreshes_written_back",
    "Credentials a CLI refreshed in its VM and the controller stored as a new version",
    ["provider"],
    registry=None,
)
EGRESS = Counter(
    "hearth_egress_connections",
    "VMs' attempts to reach a name, by verdict (allowed, refused, failed) and protocol",
    ["verdict", "protocol"],
    registry=None,
)
STEPS_FAILED = Counter(
    "hearth_plan_steps_failed",
    "VM plan steps that raised, by plan and step",
    ["plan", "step"],
    registry=None,
)
QUEUE_SECONDS = Histogram(
    "hearth_sign_in_queue_seconds",
    "Seconds a queued sign-in waited, observed as it left the queue, by how it left "
    "(admitted: it got room for its VM; cancelled, expired, failed)",
    ["outcome"],
    buckets=QUEUE_BUCKETS,
    registry=None,
)
REFUSED = Counter(
    "hearth_admissions_refused",
    "Work refused for lack of room, by reason (queue_full: a sign-in's 503; "
    "too_many_prompts: a prompt's 429; no_cli_vm_room: a prompt's 503)",
    ["reason"],
    registry=None,
)
EVENTS = (
    SIGN_INS,
    SIGN_IN_SECONDS,
    BOOT_SECONDS,
    RESUME_SECONDS,
    PROMPTS,
    PROMPT_SECONDS,
    WRITE_BACKS,
    EGRESS,
    STEPS_FAILED,
    QUEUE_SECONDS,
    REFUSED,
)


class MetricsListenError(NetworkError):
    """The metrics listener (metrics_listen) could not listen where it was told."""


VMS = "hearth_vms"
LEASES_USED = "hearth_ip_leases_used"
LEASES_FREE = "hearth_ip_leases_free"
QUEUED = "hearth_sign_ins_queued"
BUDGET = "hearth_vm_memory_budget_bytes"
RESERVED = "hearth_vm_memory_reserved_bytes"
POOL_VMS = "hearth_pool_vms"
# Why admission refused work (REFUSED's reason label).
QUEUE_FULL = "queue_full"
TOO_MANY_PROMPTS = "too_many_prompts"
NO_CLI_VM_ROOM = "no_cli_vm_room"
ADMITTED = "admitted"  # how a sign-in left the queue when it got room for its VM


# -- the hooks: one call each where the event happens --------------------------------------


def sign_in_ended(session: AuthSession) -> None:
    SIGN_INS.labels(session.provider, session.status).inc()
    seconds = (utcnow() - session.created_at).total_seconds()
    SIGN_IN_SECONDS.labels(session.provider, session.status).observe(seconds)


def agent_answered(vm: Vm, seconds: float | None) -> None:
    """A VM's agent answered for the first time since its VMM started: a boot, or the
    restore of a resume (the VM is then `resuming`)."""
    if seconds is not None:
        histogram = RESUME_SECONDS if vm.state == VmState.resuming else BOOT_SECONDS
        histogram.labels(vm.image, vm.vmm).observe(seconds)


def prompt_ended(prompt: Prompt) -> None:
    PROMPTS.labels(prompt.provider, prompt.status).inc()
    seconds = (prompt.finished_at - prompt.created_at).total_seconds()
    PROMPT_SECONDS.labels(prompt.provider, prompt.status).observe(seconds)


def sign_in_left_queue(session: AuthSession) -> None:
    """A queued sign-in left the queue: admitted (its status is now `started`), or ended."""
    outcome = ADMITTED if session.status == AuthSessionStatus.started else session.status
    QUEUE_SECONDS.labels(outcome).observe((utcnow() - session.created_at).total_seconds())


def admission_refused(reason: str) -> None:
    REFUSED.labels(reason).inc()


def credentials_written_back(provider: str) -> None:
    WRITE_BACKS.labels(provider).inc()


def egress_recorded(rows: Iterable[dict]) -> None:
    """Audit rows written for the first time (a connection's closing report is not one)."""
    for row in rows:
        EGRESS.labels(row["verdict"], row["protocol"]).inc()


def plan_step_failed(plan: str, step: str) -> None:
    STEPS_FAILED.labels(plan, step).inc()


def reset() -> None:
    """Forget every event counted so far in this process (for tests that count)."""
    for metric in EVENTS:
        metric.clear()


# -- the scrape ----------------------------------------------------------------------------


class ControllerState:
    """Gauges of what the controller says now: VMs by state and image (the destroyed left
    out), the VM subnet's addresses leased and free, the sign-ins queued, the VMs' memory
    budget and what running VMs and reservations take of it, and the warm pool's VMs by
    mark."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl

    def describe(self) -> Iterator[Metric]:
        """The families without their samples: registering reads no database."""
        yield from self.families()

    def collect(self) -> Iterator[Metric]:
        # Here, not above: the pool's module imports the sign-ins', which records metrics.
        from hearth.core.warm_pool import WARM, WARMING

        vms, used, free, queued, budget, reserved, pool_vms = families = self.families()
        query = (
            select(Vm.state, Vm.image, func.count())
            .where(Vm.state != VmState.destroyed)
            .group_by(Vm.state, Vm.image)
        )
        queue = select(func.count()).where(AuthSession.status == AuthSessionStatus.queued)
        marks = (
            select(Vm.pool, func.count())
            .where(Vm.pool.is_not(None), Vm.state != VmState.destroyed)
            .group_by(Vm.pool)
        )
        with self.ctl.db.session() as s:
            for state, image, count in s.execute(query):
                vms.add_metric([state, image], count)
            queued.add_metric([], s.scalar(queue))
            by_mark = dict(s.execute(marks).all())
        for mark in (WARM, WARMING):
            pool_vms.add_metric([mark], by_mark.get(mark, 0))
        addresses = self.ctl.vms.pool
        leased = len(addresses.leases())
        used.add_metric([], leased)
        free.add_metric([], len(addresses.candidates()) - leased)
        usage = self.ctl.capacity.usage()
        budget.add_metric([], usage.budget_mib * MIB)
        reserved.add_metric([], usage.memory_mib * MIB)
        return iter(families)

    @staticmethod
    def families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(VMS, "VMs by state and image", labels=["state", "image"]),
            GaugeMetricFamily(LEASES_USED, "Addresses of the VM subnet leased to VMs"),
            GaugeMetricFamily(LEASES_FREE, "Addresses of the VM subnet free to lease"),
            GaugeMetricFamily(QUEUED, "Sign-ins waiting in the queue for room for their VM"),
            GaugeMetricFamily(BUDGET, "The memory running VMs may take (vm_memory_budget_mib)"),
            GaugeMetricFamily(
                RESERVED,
                "The memory running VMs take (guest and VMM) and admitted ones hold reserved",
            ),
            GaugeMetricFamily(POOL_VMS, "The warm pool's VMs by mark", labels=["mark"]),
        )


def registry(ctl: Controller) -> CollectorRegistry:
    """What a scrape of `ctl` reads: this process's events and the controller's state."""
    scraped = CollectorRegistry()
    for metric in EVENTS:
        scraped.register(metric)
    scraped.register(ControllerState(ctl))
    return scraped


def names() -> set[str]:
    """Every metric family's name (a counter's samples add _total, a histogram's _bucket,
    _count and _sum)."""
    families = [f for metric in EVENTS for f in metric.describe()]
    return {f.name for f in (*families, *ControllerState.families())}


def listen(ctl: Controller) -> Callable[[], None]:
    """Serve `ctl`'s metrics without a key on the listener of `metrics_listen`, if set (keep
    it where only the scraper reaches it); the function that stops it."""
    if not ctl.settings.metrics_listen:
        return lambda: None
    host, port = host_port(ctl.settings.metrics_listen)
    try:
        server, thread = start_http_server(port, host, registry(ctl))
    except OSError as e:
        where = ctl.settings.metrics_listen
        raise MetricsListenError(f"cannot listen on HEARTH_METRICS_LISTEN {where}: {e}") from e

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(10)

    return stop
