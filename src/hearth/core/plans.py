"""A VM's create, hibernate, resume or destroy is a plan of named steps, each knowing
whether it still has work to do.

Re-running a plan after a crash is safe: steps already done say so and are skipped. This is
Flintlock's shape (`ShouldDo` / `Do`) in a few lines. A step is given the VM as the database
holds it just before the step, so no step works from what an earlier one saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hearth import metrics
from hearth.core import CoreError

if TYPE_CHECKING:
    from hearth.core.vms import VmManager
    from hearth.store.models import Vm


@dataclass(frozen=True)
class Step:
    name: str
    should_do: Callable[[VmManager, Vm], bool]
    do: Callable[[VmManager, Vm], None]


@dataclass(frozen=True)
class Plan:
    name: str
    steps: tuple[Step, ...]

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def through(self, step: str) -> Plan:
        """The plan's steps up to and including `step`: what a process that crashed right
        after it had done."""
        return Plan(self.name, self.steps[: self.step_names.index(step) + 1])


class StepFailed(CoreError):
    """A plan's step raised; `step` names it and `cause` is what it raised."""

    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"step {step!r} failed: {cause}")
        self.step = step
        self.cause = cause


def run_plan(
    plan: Plan, vms: VmManager, vm_id: str, on_step: Callable[[str], None] = lambda name: None
) -> None:
    """Run the steps that still have work to do; `on_step` hears each name before it runs."""
    for step in plan.steps:
        vm = vms.get(vm_id)
        if not step.should_do(vms, vm):
            continue
        on_step(step.name)
        try:
            step.do(vms, vm)
        except Exception as e:
            metrics.plan_step_failed(plan.name, step.name)
            raise StepFailed(step.name, e) from e
