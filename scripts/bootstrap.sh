#!/usr/bin/env bash
# Install what Hearth needs on a Debian machine, as root: Debian packages and a virtualenv.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  debootstrap e2fsprogs util-linux          # image builds (mkfs.ext4 -d, mount, chroot); setpriv (KVM probe)
  qemu-system-x86 qemu-utils                # the QEMU driver and qcow2 overlays
  iproute2 nftables                         # namespaces, bridge, TAPs, firewall
  python3 python3-venv ca-certificates
  systemd                                   # systemd-analyze: the tests verify the unit
  postgresql                                # the PostgreSQL the tests start themselves
  novnc                                     # the live view's viewer, served by the controller
  chromium tigervnc-standalone-server tigervnc-tools  # tests: a real browser, a real VNC server
  dnsmasq-base nginx-light tinyproxy microsocks      # tests: the fake internet's resolver, web
                                                     # servers and upstream proxies
  iputils-ping                                       # tests: ICMP from a VM's address
  busybox-static cpio                                # tests: the chroot and initrd checks
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

venv="${HEARTH_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
