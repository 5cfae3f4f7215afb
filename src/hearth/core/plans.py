"""A create or destroy is a plan of steps, each knowing whether it still has work to do.

Re-running a plan after a crash is safe: steps already done say so and are skipped. This is
Flintlock's shape (`ShouldDo` / `Do`) in a few lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    should_do: Callable[[], bool]
    do: Callable[[], None]


class StepFailed(RuntimeError):
    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"step {step!r} failed: {cause}")
        self.step = step
        self.cause = cause


def run_plan(steps: list[Step], on_step: Callable[[str], None] = lambda name: None) -> None:
    for step in steps:
        if not step.should_do():
            continue
        on_step(step.name)
        try:
            step.do()
        except Exception as e:
            raise StepFailed(step.name, e) from e
