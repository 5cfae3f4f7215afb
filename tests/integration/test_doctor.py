"""`hearth doctor` against real conditions made here: key files with loose modes, images
missing or built from other inputs, databases at old migrations (SQLite and PostgreSQL),
DNS servers and proxies that answer or do not, a full disk; and the command itself through
the real CLI (exit code, JSON, the table)."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
from typer.testing import CliRunner

from hearth import doctor
from hearth.cli import app
from hearth.config import Settings
from hearth.doctor import Check, Status
from hearth.image.builder import ARTEFACTS, ImageBuilder
from hearth.store.crypto import Keyring
from hearth.store.db import Database, head_revision
from hearth.waiting import wait_for

OLD_REVISION = "0003"


def only(checks: Iterator[Check]) -> Check:
    (check,) = list(checks)
    return check


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["name"]: row for row in rows}


def write_image(settings: Settings, name: str) -> Path:
    """An image directory as a build leaves it: every artefact and a manifest naming the
    inputs the builder computes now (the artefacts' bytes are not what doctor checks)."""
    state = ImageBuilder(settings).state(name)
    state.path.mkdir(parents=True)
    for artefact in ARTEFACTS:
        (state.path / artefact).write_bytes(b"")
    (state.path / "manifest.json").write_text(json.dumps({"name": name, "inputs": state.inputs}))
    return state.path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing answers on: bound for TCP (so nothing else takes it) but never
    listening, so a connection is refused; nothing is bound for UDP, so a query goes
    unanswered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[str]:
    """A real DNS server (dnsmasq) on a loopback port, answering from its own records only.
    It listens on UDP and TCP: a port found free for UDP may be taken for TCP by a test
    running alongside, so a dnsmasq that exits at once is started again on another port."""
    for _ in range(5):
        port, proc = _start_dnsmasq(tmp_path)

        wait_for(functools.partial(_answers_or_exited, port, proc), 20, "dnsmasq to answer")
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"dnsmasq did not start on 5 free ports (last exit {proc.returncode})")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _answers_or_exited(port: int, proc: subprocess.Popen) -> bool:
    query = dns.message.make_query("doctor.example.test", "A")
    try:
        return bool(dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5).answer)
    except dns.exception.Timeout:
        return proc.poll() is not None


def _start_dnsmasq(tmp_path: Path) -> tuple[int, subprocess.Popen]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--host-record=doctor.example.test,192.0.2.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return port, proc


# -- the master key ------------------------------------------------------------------------


def test_a_master_key_file_others_may_read_fails_naming_chmod_600(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    Keyring.load_or_create(settings.master_key_file)
    assert only(doctor.check_master_key(settings)).status is Status.PASS

    settings.master_key_file.chmod(0o644)
    check = only(doctor.check_master_key(settings))
    assert check.status is Status.FAIL
    assert "0644" in check.message
    assert check.fix == f"chmod 600 {settings.master_key_file}"


def test_a_missing_or_bad_master_key_fails_without_showing_it(tmp_path: Path) -> None:
    missing = only(doctor.check_master_key(Settings(home=tmp_path)))
    assert missing.status is Status.FAIL and "no master key file" in missing.message

    secret = "bm90LXRoaXJ0eS10d28tYnl0ZXM="  # base64, but not of 32 bytes
    bad = only(doctor.check_master_key(Settings(home=tmp_path, master_key=secret)))
    assert bad.status is Status.FAIL
    assert "HEARTH_MASTER_KEY" in bad.message and secret not in bad.message + bad.fix


# -- images --------------------------------------------------------------------------------


def test_a_missing_image_fails_naming_hearth_image_build(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    write_image(settings, "browser")
    checks = {c.name: c for c in doctor.check_images(settings)}
    assert checks["image browser"].status is Status.PASS
    assert checks["image cli"].status is Status.FAIL
    assert checks["image cli"].fix == "hearth image build cli"
    assert str(tmp_path / "images" / "cli") in checks["image cli"].message


def test_an_image_whose_inputs_changed_fails(tmp_path: Path) -> None:
    write_image(Settings(home=tmp_path), "cli")
    changed = Settings(home=tmp_path, suite="bookworm")  # the base layer's inputs changed
    check = {c.name: c for c in doctor.check_images(changed)}["image cli"]
    assert check.status is Status.FAIL
    assert "built from other inputs" in check.message
    assert check.fix == "hearth image build cli"


def test_an_image_missing_an_artefact_fails(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    (write_image(settings, "cli") / "initrd").unlink()
    check = {c.name: c for c in doctor.check_images(settings)}["image cli"]
    assert check.status is Status.FAIL and "lacks initrd" in check.message


def test_the_builder_and_doctor_agree_on_up_to_date(tmp_path: Path) -> None:
    """The builder's "nothing to do" is the same test doctor passes on (ImageState)."""
    settings = Settings(home=tmp_path)
    path = write_image(settings, "cli")
    result = ImageBuilder(settings).build("cli")
    assert not result.rebuilt and result.path == path


# -- the database --------------------------------------------------------------------------


def test_a_database_at_an_old_revision_fails_and_db_migrate_fixes_it(
    empty_db: Database, database_url: str, tmp_path: Path
) -> None:
    empty_db.migrate(OLD_REVISION)
    settings = Settings(home=tmp_path, database_url=database_url)
    check = only(doctor.check_database(settings))
    assert check.status is Status.FAIL
    assert f"at migration {OLD_REVISION}, not the latest ({head_revision()})" in check.message
    assert check.fix == "hearth db migrate"

    env = {"HEARTH_HOME": str(tmp_path), "HEARTH_DATABASE_URL": database_url}
    result = CliRunner().invoke(app, ["db", "migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert f"from {OLD_REVISION} to {head_revision()}" in result.output
    assert only(doctor.check_database(settings)).status is Status.PASS

    again = CliRunner().invoke(app, ["db", "migrate"], env=env)
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_an_empty_database_fails(empty_db: Database, database_url: str, tmp_path: Path) -> None:
    check = only(doctor.check_database(Settings(home=tmp_path, database_url=database_url)))
    assert check.status is Status.FAIL and "no schema yet" in check.message


def test_a_missing_sqlite_file_fails_and_doctor_does_not_create_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    check = only(doctor.check_database(settings))
    assert check.status is Status.FAIL and check.fix == "hearth db migrate"
    assert not (tmp_path / "hearth.db").exists()


def test_an_unreachable_database_fails_without_its_password(
    tmp_path: Path, closed_port: int
) -> None:
    url = f"postgresql+psycopg://hearth:hunter2secret@127.0.0.1:{closed_port}/hearth"
    check = only(doctor.check_database(Settings(home=tmp_path, database_url=url)))
    assert check.status is Status.FAIL
    assert "cannot reach postgresql+psycopg://hearth:***@127.0.0.1" in check.message
    assert "Connection refused" in check.message
    assert "hunter2secret" not in check.message + check.fix

    env = {"HEARTH_HOME": str(tmp_path), "HEARTH_DATABASE_URL": url}
    migrate = CliRunner().invoke(app, ["db", "migrate"], env=env)
    assert migrate.exit_code == 1
    assert "cannot migrate postgresql+psycopg://hearth:***@127.0.0.1" in migrate.stderr
    assert "hunter2secret" not in migrate.output


# -- egress --------------------------------------------------------------------------------


def test_the_egress_resolver_answers_or_fails(
    tmp_path: Path, resolver: str, closed_port: int
) -> None:
    check = only(doctor.check_egress_resolver(Settings(home=tmp_path, egress_resolver=resolver)))
    assert check.status is Status.PASS and resolver in check.message

    silent = f"127.0.0.1:{closed_port}"
    check = only(doctor.check_egress_resolver(Settings(home=tmp_path, egress_resolver=silent)))
    assert check.status is Status.FAIL
    assert f"the DNS server at {silent} does not answer" in check.message
    assert "HEARTH_EGRESS_RESOLVER" in check.fix


def test_an_unreachable_upstream_proxy_fails_without_its_password(
    tmp_path: Path, closed_port: int
) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    up = f"http://hearth:s3cret-pw@127.0.0.1:{listening.getsockname()[1]}"
    down = f"socks5://hearth:s3cret-pw@127.0.0.1:{closed_port}"
    try:
        settings = Settings(home=tmp_path, upstream_proxy=up, upstream_proxies={"demo": down})
        checks = {c.name: c for c in doctor.check_upstream_proxies(settings)}
    finally:
        listening.close()
    assert checks["upstream proxy"].status is Status.PASS
    failed = checks["upstream proxy demo"]
    assert failed.status is Status.FAIL
    assert "cannot reach the upstream proxy socks5://127.0.0.1:" in failed.message
    assert "Connection refused" in failed.message and "HEARTH_UPSTREAM_PROXIES" in failed.fix
    assert all("s3cret-pw" not in c.message + c.fix for c in checks.values())

    direct = only(doctor.check_upstream_proxies(Settings(home=tmp_path)))
    assert direct.status is Status.SKIPPED


# -- the host ------------------------------------------------------------------------------


def test_kvm_is_needed_only_where_configured(tmp_path: Path) -> None:
    """The real probe, twice: qemu_accel=auto passes either way (TCG is a working
    configuration, and says so); qemu_accel=kvm fails exactly where auto fell back."""
    auto = only(doctor.check_kvm(Settings(home=tmp_path, qemu_accel="auto")))
    strict = only(doctor.check_kvm(Settings(home=tmp_path, qemu_accel="kvm")))
    assert auto.status is Status.PASS
    if strict.status is Status.PASS:
        assert "TCG" not in auto.message
    else:
        assert strict.status is Status.FAIL and "qemu_accel=kvm needs KVM" in strict.message
        assert "QEMU will use TCG" in auto.message
        assert "HEARTH_QEMU_ACCEL" in strict.fix
    tcg = only(doctor.check_kvm(Settings(home=tmp_path, qemu_accel="tcg")))
    assert tcg.status is Status.SKIPPED


def test_firecracker_and_jailer_are_checked_only_when_configured(tmp_path: Path) -> None:
    qemu = {c.name: c for c in doctor.check_firecracker(Settings(home=tmp_path))}
    assert {c.status for c in qemu.values()} == {Status.SKIPPED}

    missing = str(tmp_path / "no-such-firecracker")
    settings = Settings(
        home=tmp_path, vmm="firecracker", firecracker_bin=missing, jailer_bin=missing
    )
    checks = {c.name: c for c in doctor.check_firecracker(settings)}
    assert checks["firecracker"].status is Status.FAIL
    assert checks["jailer"].status is Status.FAIL
    assert missing in checks["firecracker"].message
    assert "HEARTH_FIRECRACKER_BIN" in checks["firecracker"].fix


def test_a_full_disk_and_too_little_memory_fail(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        disk = only(doctor.check_disk(Settings(home=small / "hearth")))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert disk.status is Status.FAIL and f"under {small / 'hearth'}" in disk.message
    assert only(doctor.check_disk(Settings(home=tmp_path))).status is Status.PASS

    memory = only(doctor.check_memory(Settings(home=tmp_path, memory_mib=2**30)))
    assert memory.status is Status.FAIL and "HEARTH_MEMORY_MIB" in memory.fix
    memory = only(doctor.check_memory(Settings(home=tmp_path, cli_memory_mib=2**30)))
    assert memory.status is Status.FAIL and "HEARTH_CLI_MEMORY_MIB" in memory.fix
    memory = only(doctor.check_memory(Settings(home=tmp_path, browser_memory_mib=512)))
    assert memory.status is Status.PASS and "VMs of 1024 MiB" in memory.message


def ksm_dir(tmp_path: Path, run: str, pages_sharing: str = "0") -> Path:
    """A directory laid out as /sys/kernel/mm/ksm, with the values given."""
    ksm = tmp_path / "ksm"
    ksm.mkdir(parents=True)
    (ksm / "run").write_text(f"{run}\n")
    (ksm / "pages_sharing").write_text(f"{pages_sharing}\n")
    return ksm


def test_ksm_is_information_with_the_command_to_enable_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    off = only(doctor.check_ksm(settings, ksm_dir(tmp_path / "off", "0")))
    assert off.status is Status.INFO and "KSM is off" in off.message
    assert off.fix.endswith("echo 1 > /sys/kernel/mm/ksm/run")
    on = only(doctor.check_ksm(settings, ksm_dir(tmp_path / "on", "1", "25600")))
    assert on.status is Status.PASS and "25600 pages shared, 100 MiB saved" in on.message
    absent = only(doctor.check_ksm(settings, tmp_path / "none"))
    assert absent.status is Status.SKIPPED and "no KSM" in absent.message
    # This host's, read and left as it was.
    host = Path("/sys/kernel/mm/ksm/run")
    if host.exists():
        before = host.read_text()
        expected = Status.PASS if before.strip() == "1" else Status.INFO
        assert only(doctor.check_ksm(settings)).status is expected
        assert host.read_text() == before


# -- the command ---------------------------------------------------------------------------


def test_hearth_doctor_exit_code_json_and_table(tmp_path: Path, resolver: str) -> None:
    env = {
        "HEARTH_HOME": str(tmp_path),
        "HEARTH_QEMU_ACCEL": "tcg",  # the KVM probe has its own test
        "HEARTH_EGRESS_RESOLVER": resolver,
        "HEARTH_DATABASE_URL": "",
        "HEARTH_MASTER_KEY": "",
        "HEARTH_UPSTREAM_PROXY": "",
        "HEARTH_UPSTREAM_PROXIES": "{}",
    }
    runner = CliRunner()
    settings = Settings.from_environ(env)
    for image in ("browser", "cli"):
        write_image(settings, image)
    assert runner.invoke(app, ["db", "migrate"], env=env).exit_code == 0
    Keyring.load_or_create(settings.master_key_file)

    healthy = runner.invoke(app, ["doctor", "--json"], env=env)
    assert healthy.exit_code == 0, healthy.output
    rows = json.loads(healthy.stdout)
    assert all(set(row) == {"name", "status", "message", "fix"} for row in rows)
    assert {row["status"] for row in rows} <= {"pass", "skipped", "info"}  # info: KSM off
    assert by_name(rows)["kvm"]["status"] == "skipped"
    assert by_name(rows)["database"]["status"] == "pass"

    settings.master_key_file.chmod(0o644)
    sick = runner.invoke(app, ["doctor", "--json"], env=env)
    assert sick.exit_code == 1
    key = by_name(json.loads(sick.stdout))["master key"]
    assert key["status"] == "fail" and key["fix"] == f"chmod 600 {settings.master_key_file}"

    table = runner.invoke(app, ["doctor"], env=env)
    assert table.exit_code == 1
    lines = table.stdout.splitlines()
    assert any(line.endswith(f"fix: chmod 600 {settings.master_key_file}") for line in lines)
    assert any(str(tmp_path / "images" / "cli") in line for line in lines)  # never wrapped
    assert lines[-1] == f"{len(rows)} checks: 1 failed"
    assert os.stat(settings.master_key_file).st_mode & 0o777 == 0o644  # doctor changes nothing
