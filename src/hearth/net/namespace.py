"""Running a command inside a named network namespace: one way, everywhere in Hearth.

`nsenter --net=/run/netns/NAME` enters the network namespace and nothing else. `ip netns
exec NAME` would also give the command a private mount namespace (to lay /etc/netns/NAME
over /etc and remount /sys): a namespace created from inside it (`ip netns add` bind-mounts
it under /run/netns) is then visible only there, not to the rest of the host or to the
processes Hearth starts afterwards. So the controller, the VMMs and the network's own
commands (nft, sysctl) all go in through nsenter.
"""

from __future__ import annotations


def nsenter(name: str) -> list[str]:
    """The argv prefix that runs a command in network namespace `name` without a private
    mount namespace; empty when `name` is "" (the caller's own namespace)."""
    return ["nsenter", f"--net=/run/netns/{name}"] if name else []
