"""The root of Hearth's own errors, and how the API answers each.

Every package but the guest's (standard library only, run inside VMs) has one base:
`hearth.core.CoreError`, `hearth.store.StoreError`, `hearth.net.NetworkError`,
`hearth.vmm.base.VmmError`, `hearth.image.chroot.BuildError`,
`hearth.providers.base.ProviderError`, `hearth.waiting.Timeout`, and
`hearth.settings_file.SettingsError`. Each class says its
HTTP status in `http_status` and its machine-readable name in `code`; an error that
reaches the API unhandled is answered with that status and `{"error": message, "code":
code}` (hearth.api.errors). The table is in docs/errors.md.
Messages are written for the user of the API: they say what is wrong and never carry a
secret.
"""

from __future__ import annotations

import re


class HearthError(Exception):
    """Something Hearth could not do; the message says what and why."""

    http_status: int = 500
    # Seconds after which asking again may succeed (a 503 beyond capacity, or while the
    # controller stops): the API sends it as Retry-After.
    retry_after: int | None = None
    # What the API's error body calls it, for programs: the class's name in snake_case
    # (NoCredentials: no_credentials) unless the class names its own.
    code: str = "hearth_error"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            cls.code = snake_case(cls.__name__.lstrip("_"))


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
