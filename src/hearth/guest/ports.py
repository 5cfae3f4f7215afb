"""The ports a guest listens on, in one place for the guest and the host.

The guest's agent and VNC server listen on these; the host's agent client and the VM
network's firewall (hearth.net.topology) import the same constants. They are fixed in the
image (and in every hibernated VM's snapshot), so they are constants rather than settings.
Standard library only: the guest runs this with Debian's python3.
"""

AGENT_PORT = 8080  # the in-guest agent's HTTP API (hearth.guest.agent)
VNC_PORT = 5901  # Xtigervnc on display :1 in browser VMs (hearth.guest.vnc)
