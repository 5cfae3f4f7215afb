"""The root of Hearth's own errors, and how the API answers each.

Every package but the guest's (standard library only, run inside VMs) has one base:
`hearth.core.CoreError`, `hearth.store.StoreError`, `hearth.net.NetworkError`,
`hearth.vmm.base.VmmError`, `hearth.image.chroot.BuildError`,
`hearth.providers.base.ProviderError`, `hearth.waiting.Timeout`, and
`hearth.settings_file.SettingsError`. Each class says its
HTTP status in `http_status`; an error that reaches the API unhandled is answered with
that status and `{"error": message}` (hearth.api.app). The table is in docs/errors.md.
Messages are written for the user of the API: they say what is wrong and never carry a
secret.
"""

from __future__ import annotations


class HearthError(Exception):
    """Something Hearth could not do; the message says what and why."""

    http_status: int = 500
    # Seconds after which asking again may succeed (a 503 beyond capacity, or while the
    # controller stops): the API sends it as Retry-After.
    retry_after: int | None = None
