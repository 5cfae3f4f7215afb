"""VM egress: a DNS responder and a proxy on each VM's gateway that let a VM reach, by name,
exactly what its policy allows, and record every attempt.

The VMs have no route beyond their gateway and the host does no NAT for them. nftables
sends their TCP 80/443 and DNS, whatever the address, to the gateway; the responder answers
allowed names with the gateway's own address; the proxy reads the name (TLS SNI, HTTP
Host), checks it against the VM's policy, resolves it itself, refuses addresses no VM may
reach, dials out from the controller's side (directly or through an upstream proxy) and
splices bytes. No TLS is terminated, so no certificate is ever made or trusted.
"""
