"""`hearth doctor`: checks of the host Hearth runs on, each saying what is wrong and how to
fix it.

Every check looks at the real thing (boots the KVM probe, runs the binaries, reads the
database's migration, stats the key file, sends a DNS query, connects to the upstream proxy)
and never changes it: fixing is the operator's, with the command the check names. Network
checks run from this process's namespace, as the controller's own dialling does: run doctor
where `hearth serve` runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from hearth.config import BROWSER_IMAGE, Settings
from hearth.core.inventory import meminfo_mib
from hearth.image.builder import ImageBuilder
from hearth.net.egress.dialer import resolver_address
from hearth.net.egress.upstream import Upstream
from hearth.store.crypto import ENV_VAR, Keyring, KeyringError, MasterKey, UnsafeKeyFile
from hearth.store.db import (
    connect_failure,
    head_revision,
    known_revisions,
    make_engine,
    schema_revision,
    shown_url,
)
from hearth.vmm.qemu import QEMU, kvm_runs_guests

# Room for VM disks' copy-on-write overlays, hibernated VMs' snapshots (each as big as its
# VM's memory) and consoles; an image build checks its own, larger need (recipes).
MIN_FREE_DISK_GIB = 4
NETWORK_TIMEOUT = 3.0  # seconds a DNS answer or a TCP connect may take
VERSION_TIMEOUT = 10.0
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")
# Kernel samepage merging: QEMU marks guest memory mergeable, so with KSM running the
# identical pages of VMs booted from one image (kernel, libraries) are kept once.
KSM = Path("/sys/kernel/mm/ksm")
KSM_ON = f"echo 1 > {KSM / 'run'}"


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"  # the check does not apply to this configuration
    INFO = "info"  # a choice of the operator's, shown with how to make it; never a failure


@dataclass(frozen=True)
class Check:
    """One check's verdict: `message` says what was found (what is wrong, on a failure) and
    `fix` how to mend it (empty when nothing is to be done)."""

    name: str
    status: Status
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


def passed(name: str, message: str) -> Check:
    return Check(name, Status.PASS, message)


def failed(name: str, message: str, fix: str) -> Check:
    return Check(name, Status.FAIL, message, fix)


def info(name: str, message: str, fix: str) -> Check:
    return Check(name, Status.INFO, message, fix)


def skipped(name: str, why: str) -> Check:
    return Check(name, Status.SKIPPED, f"not configured ({why})")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order an operator fixes things: host, binaries, files, services."""
    return [check for produce in _CHECKS for check in produce(settings)]


def all_passed(checks: list[Check]) -> bool:
    return all(c.status is not Status.FAIL for c in checks)


# -- the host ------------------------------------------------------------------------------


def check_kvm(settings: Settings) -> Iterator[Check]:
    name = "kvm"
    needs_kvm = settings.vmm == "firecracker" or settings.qemu_accel == "kvm"
    if settings.vmm == "qemu" and settings.qemu_accel == "tcg":
        yield skipped(name, "qemu_accel=tcg: QEMU uses TCG, software emulation")
        return
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        why = "/dev/kvm is missing or not readable and writable by this user"
    elif shutil.which(QEMU) is None:
        why = f"{QEMU} is not installed, so KVM cannot be probed"
    elif kvm_runs_guests():
        yield passed(name, "a guest runs under KVM")
        return
    else:
        why = "/dev/kvm is there but a guest does not run under it (e.g. nested or PVM hosts)"
    if not needs_kvm:  # qemu_accel=auto: QEMU falls back to TCG, a working configuration
        yield passed(name, f"{why}: QEMU will use TCG (software emulation; VMs boot slower)")
        return
    needed_by = "Firecracker" if settings.vmm == "firecracker" else "qemu_accel=kvm"
    yield failed(
        name,
        f"{why}; {needed_by} needs KVM",
        "enable virtualisation for this host (load kvm_intel or kvm_amd, give this user "
        "/dev/kvm), or run VMs under QEMU with HEARTH_VMM=qemu HEARTH_QEMU_ACCEL=auto",
    )


def check_qemu(settings: Settings) -> Iterator[Check]:
    if settings.vmm != "qemu":
        yield skipped("qemu", f"vmm={settings.vmm}")
        return
    yield _binary_version("qemu", QEMU, "apt-get install qemu-system-x86")


def check_firecracker(settings: Settings) -> Iterator[Check]:
    if settings.vmm != "firecracker":
        yield skipped("firecracker", f"vmm={settings.vmm}")
        yield skipped("jailer", f"vmm={settings.vmm}")
        return
    install = (
        "install Firecracker's release binaries (github.com/firecracker-microvm/firecracker) "
        "and point HEARTH_FIRECRACKER_BIN and HEARTH_JAILER_BIN at them"
    )
    yield _binary_version("firecracker", settings.firecracker_bin, install)
    if settings.jailer_bin:
        yield _binary_version("jailer", settings.jailer_bin, install)
    else:
        yield skipped("jailer", "jailer_bin is empty: Firecracker runs without the jailer")


def check_nftables(settings: Settings) -> Iterator[Check]:
    name = "nftables"
    if shutil.which("nft") is None:
        yield failed(name, "nft is not installed", "apt-get install nftables")
        return
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    if listed.returncode != 0:
        yield failed(
            name,
            f"nft cannot list the tables here: {_last_line(listed.stderr)}",
            "run Hearth as root (it needs CAP_NET_ADMIN for its namespaces and firewall)",
        )
        return
    yield _binary_version(name, "nft", "apt-get install nftables")


def check_disk(settings: Settings) -> Iterator[Check]:
    name = "disk"
    home = settings.home
    existing = next(p for p in (home, *home.parents) if p.exists())  # home may not exist yet
    free_gib = shutil.disk_usage(existing).free / 2**30
    message = f"{free_gib:.1f} GiB free under {home}"
    if free_gib < MIN_FREE_DISK_GIB:
        yield failed(
            name,
            f"{message}, fewer than the {MIN_FREE_DISK_GIB} GiB VMs' disks and snapshots need",
            f"free space on the file system holding {home} (hearth vm rm, hearth image rm), "
            "or set HEARTH_HOME to a larger one",
        )
        return
    yield passed(name, message)


def check_memory(settings: Settings) -> Iterator[Check]:
    name = "memory"
    total, available = meminfo_mib()
    message = f"{available} MiB of {total} MiB available"
    largest, setting = max(
        (settings.browser_memory_mib, "browser_memory_mib"),
        (settings.cli_memory_mib, "cli_memory_mib"),
        (settings.memory_mib, "memory_mib"),
    )
    if available < largest:
        yield failed(
            name,
            f"{message}, less than one VM's {largest} MiB ({setting})",
            f"stop VMs or other work (hearth vm ls), add memory, or lower HEARTH_{setting.upper()}",
        )
        return
    yield passed(name, f"{message}: room for {available // largest} VMs of {largest} MiB")


def check_ksm(settings: Settings, ksm: Path = KSM) -> Iterator[Check]:
    """Whether the host merges the VMs' identical pages: the operator's choice (it costs the
    host a scanning thread's CPU), so shown as information, never changed."""
    name = "ksm"
    if not (ksm / "run").exists():
        yield skipped(name, f"the kernel has no KSM: {ksm} is absent")
        return
    if (ksm / "run").read_text().strip() != "1":
        yield info(
            name,
            "KSM is off: VMs booted from one image keep identical pages once each",
            f"to merge them (the operator's choice; it costs a scanning thread's CPU): {KSM_ON}",
        )
        return
    sharing = int((ksm / "pages_sharing").read_text())
    saved_mib = sharing * os.sysconf("SC_PAGE_SIZE") // 2**20
    yield passed(name, f"KSM is on: {sharing} pages shared, {saved_mib} MiB saved")


# -- Hearth's files ------------------------------------------------------------------------


def check_images(settings: Settings) -> Iterator[Check]:
    builder = ImageBuilder(settings)
    for image in dict.fromkeys((BROWSER_IMAGE, settings.cli_image)):
        name = f"image {image}"
        build = f"hearth image build {image}"
        try:
            state = builder.state(image)
        except ValueError as e:  # an unknown recipe named by cli_image
            yield failed(name, str(e), "set HEARTH_CLI_IMAGE to one of the recipes")
            continue
        if state.built_inputs is None:
            yield failed(name, f"no {image} image at {state.path}", build)
        elif state.built_inputs != state.inputs:
            yield failed(
                name,
                f"the {image} image at {state.path} was built from other inputs "
                f"({state.built_inputs}; now {state.inputs}): settings, recipe or guest code "
                "changed since",
                build,
            )
        elif state.missing:
            yield failed(
                name, f"the {image} image at {state.path} lacks {', '.join(state.missing)}", build
            )
        else:
            yield passed(name, f"{state.path} is up to date ({state.inputs})")


def check_database(settings: Settings) -> Iterator[Check]:
    name = "database"
    url = make_url(settings.db_url)
    shown = shown_url(settings.db_url)
    migrate = "hearth db migrate"
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(url.database):
        yield failed(name, f"no database at {url.database}", migrate)
        return
    engine = make_engine(settings.db_url)
    try:
        revision = schema_revision(engine)
    except SQLAlchemyError as e:
        yield failed(
            name,
            f"cannot reach {shown}: {connect_failure(e)}",
            "start the database server, or correct HEARTH_DATABASE_URL",
        )
        return
    finally:
        engine.dispose()
    head = head_revision()
    if revision == head:
        yield passed(name, f"{shown} is at the latest migration ({head})")
    elif revision is None:
        yield failed(name, f"{shown} has no schema yet (the latest migration is {head})", migrate)
    elif revision not in known_revisions():
        yield failed(
            name,
            f"{shown} is at migration {revision}, which this Hearth does not know "
            f"(its latest is {head}): a newer Hearth migrated it",
            "run the Hearth version that migrated this database",
        )
    else:
        yield failed(name, f"{shown} is at migration {revision}, not the latest ({head})", migrate)


def check_master_key(settings: Settings) -> Iterator[Check]:
    name = "master key"
    if settings.master_key:
        try:
            key = MasterKey.from_base64(settings.master_key, ENV_VAR)
        except KeyringError as e:
            yield failed(name, str(e), f"set {ENV_VAR} to the base64 of the 32-byte master key")
            return
        yield passed(name, f"{ENV_VAR} holds master key {key.key_id}")
        return
    path = settings.master_key_file
    try:
        keyring = Keyring.load(path)
    except FileNotFoundError:
        yield failed(
            name,
            f"no master key file at {path}",
            "restore it from your backup if credentials were ever stored; on a new host "
            "`hearth serve` creates it on its first start",
        )
        return
    except UnsafeKeyFile as e:
        yield failed(name, str(e), e.fix)
        return
    except KeyringError as e:
        yield failed(name, str(e), f"restore {path} from your backup")
        return
    yield passed(
        name, f"{path} (readable by its owner only) holds master key {keyring.current_key_id}"
    )


# -- what egress reaches -------------------------------------------------------------------


def check_egress_resolver(settings: Settings) -> Iterator[Check]:
    name = "egress resolver"
    if settings.egress_resolver:
        servers = [resolver_address(settings.egress_resolver)]
        fix = "start that DNS server, or correct HEARTH_EGRESS_RESOLVER"
    else:
        fix = "correct /etc/resolv.conf, or set HEARTH_EGRESS_RESOLVER"
        try:
            servers = [(host, 53) for host in dns.resolver.Resolver().nameservers]
        except dns.resolver.NoResolverConfiguration:
            yield failed(name, "the system has no DNS server (/etc/resolv.conf names none)", fix)
            return
    for host, port in servers:
        where = f"{host}:{port}"
        query = dns.message.make_query(".", "NS")
        try:
            answer = dns.query.udp(query, host, port=port, timeout=NETWORK_TIMEOUT)
        except (dns.exception.DNSException, OSError) as e:
            yield failed(name, f"the DNS server at {where} does not answer: {_why(e)}", fix)
            continue
        yield passed(name, f"{where} answers ({dns.rcode.to_text(answer.rcode())})")


def check_upstream_proxies(settings: Settings) -> Iterator[Check]:
    if not settings.upstream_proxy and not settings.upstream_proxies:
        yield skipped("upstream proxy", "egress leaves directly")
        return
    proxies = {"upstream proxy": (settings.upstream_proxy, "HEARTH_UPSTREAM_PROXY")}
    for provider, url in sorted(settings.upstream_proxies.items()):
        proxies[f"upstream proxy {provider}"] = (url, "HEARTH_UPSTREAM_PROXIES")
    for name, (url, setting) in proxies.items():
        if not url:
            yield skipped(name, "egress leaves directly")
            continue
        upstream = Upstream.parse(url)  # the settings checked it: never fails here
        try:
            socket.create_connection(
                (upstream.host, upstream.port), timeout=NETWORK_TIMEOUT
            ).close()
        except OSError as e:
            yield failed(
                name,
                f"cannot reach the upstream proxy {upstream.shown}: {_why(e)}",
                f"start the proxy, or correct {setting}",
            )
            continue
        yield passed(name, f"{upstream.shown} accepts connections")


_CHECKS: tuple[Callable[[Settings], Iterator[Check]], ...] = (
    check_kvm,
    check_qemu,
    check_firecracker,
    check_nftables,
    check_disk,
    check_memory,
    check_ksm,
    check_images,
    check_database,
    check_master_key,
    check_egress_resolver,
    check_upstream_proxies,
)


# -- helpers -------------------------------------------------------------------------------


def _binary_version(name: str, program: str, install: str) -> Check:
    """`program --version`'s version, or a failure naming how to install it."""
    path = shutil.which(program)
    if path is None:
        return failed(name, f"{program} is not installed (or not on PATH)", install)
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return failed(name, f"{path} --version did not run: {_why(e)}", install)
    version = _VERSION.search(done.stdout + done.stderr)
    if done.returncode != 0 or version is None:
        return failed(name, f"{path} --version failed: {_last_line(done.stderr)}", install)
    return passed(name, f"{path} {version.group()}")


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
