"""The demo CLI, run inside the VM with Debian's python3: the image builder copies these
modules into /usr/lib/hearth beside the guest agent's (hearth/guest/), so their names must
not clash with those."""
