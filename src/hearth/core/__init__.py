"""The controller's core: VMs and their plans, sign-in sessions, CLI VMs and prompts."""

from hearth.errors import HearthError


class CoreError(HearthError):
    """The core could not do what was asked."""
