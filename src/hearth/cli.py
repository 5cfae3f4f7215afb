"""The `hearth` command: images, VMs, the network, reconciliation and the service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth import config
from hearth.config import BROWSER_IMAGE
from hearth.core import runtime
from hearth.core.reconciler import reconcile
from hearth.core.sign_in_vm import browser_seed
from hearth.demo.sandbox import sandbox
from hearth.image import recipes
from hearth.image.builder import ImageBuilder, read_manifest
from hearth.image.chroot import BuildError
from hearth.net.namespace import nsenter
from hearth.settings_file import PATH_VARIABLE, SettingsError

if TYPE_CHECKING:
    from hearth.doctor import Check

app = typer.Typer(no_args_is_help=True, help="Hearth: AI coding CLIs in microVMs.")
image_app = typer.Typer(no_args_is_help=True, help="Golden VM images.")
vm_app = typer.Typer(no_args_is_help=True, help="Virtual machines.")
net_app = typer.Typer(no_args_is_help=True, help="The VM network.")
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")
app.add_typer(net_app, name="net")

out = Console()
err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Say what is wrong on one unwrapped line (a path or URL in it copies whole), the
    message as it is: brackets in it are not Rich markup."""
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True, highlight=False)
    return typer.Exit(1)


@app.callback()
def main(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=f"the configuration file (default: ${PATH_VARIABLE} or /etc/hearth/hearth.toml)",
        ),
    ] = None,
) -> None:
    """Read the settings once before any command, so that a bad one stops it here, named
    (but for `install`, which may write the file first)."""
    if config_file is not None:  # the environment carries it to every Hearth process started
        os.environ[PATH_VARIABLE] = str(config_file)
    if ctx.invoked_subcommand == "install":
        return
    try:
        config.load()
    except SettingsError as e:
        raise fail(str(e)) from None


# -- images --------------------------------------------------------------------------------


@image_app.command("build")
def image_build(
    names: Annotated[list[str], typer.Argument(help="browser, cli or baseline")],
    force: Annotated[bool, typer.Option(help="rebuild even if up to date")] = False,
) -> None:
    """Build golden images (cached layers; only what changed is rebuilt)."""
    settings = config.load()
    for name in names:
        try:
            recipes.get(name)
        except ValueError as e:
            raise fail(str(e)) from None
    for name in names:
        with out.status(f"[bold]{name}[/bold]: starting") as status:

            def progress(step: str, status=status) -> None:
                status.update(f"[bold]{step}")
                out.log(step)

            try:
                result = ImageBuilder(settings, progress).build(name, force=force)
            except BuildError as e:
                raise fail(str(e)) from None
        m = result.manifest
        out.print(
            f"[green]{name}[/green] {result.path} inputs={m['inputs']} "
            f"({'built' if result.rebuilt else 'up to date'}, {m['build_seconds']}s)"
        )


@image_app.command("ls")
def image_ls() -> None:
    """List built images."""
    settings = config.load()
    table = Table("name", "inputs", "kernel", "rootfs MiB", "built at", "build s")
    for name in sorted(recipes.RECIPES):
        m = read_manifest(settings.images_dir / name)
        if m:
            table.add_row(
                name,
                m["inputs"],
                m["versions"]["kernel"],
                str(m["artefacts"]["rootfs.ext4"]["size"] // 2**20),
                m["built_at"],
                str(m["build_seconds"]),
            )
    out.print(table)


@image_app.command("rm")
def image_rm(name: str) -> None:
    """Remove a built image (its cached layers stay for the next build)."""
    path = config.load().images_dir / name
    if not path.is_dir():
        raise fail(f"no image {name!r} at {path}")
    shutil.rmtree(path)
    out.print(f"removed {path}")


# -- VMs -----------------------------------------------------------------------------------


@vm_app.command("boot")
def vm_boot(
    image: Annotated[str, typer.Option(help="browser or cli")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Boot a VM and wait for its agent; print its id, address and boot-to-agent seconds."""
    vms = runtime.vm_manager(config.load())
    reconcile(vms)
    try:
        with err.status(f"booting a {image} VM") as status:
            extras = browser_seed() if image == BROWSER_IMAGE else None  # its VNC password
            vm = vms.create(
                image, on_step=lambda step: status.update(f"{image} VM: {step}"), seed_extras=extras
            )
    except Exception as e:  # noqa: BLE001 - the message is the user's answer
        raise fail(str(e)) from None
    with vms.agent(vm) as agent:
        health = agent.health()
    _report_vm(vm, health, as_json)


def _report_vm(vm, health: dict, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "id": vm.id,
                    "image": vm.image,
                    "ip": vm.ip,
                    "tap": vm.tap,
                    "mac": vm.mac,
                    "netns": vm.netns,
                    "boot_to_agent_seconds": round(vm.boot_seconds, 2),
                    "agent": health,
                }
            )
        )
        return
    out.print(f"[green]VM {vm.id}[/green] ready in {vm.boot_seconds:.1f}s: {vm.ip} on {vm.tap}")
    for a in health["network"]["addresses"]:
        out.print(f"  address {a['ifname']} {a['address']}/{a['prefixlen']}")
    for r in health["network"]["routes"]:
        out.print(f"  route   {r['dst']} via {r.get('gateway') or '-'} dev {r['dev']}")
    out.print(
        f"  agent   {health['status']}, serving since guest uptime "
        f"{health['started_at_uptime']:.1f}s, hostname {health['hostname']}"
    )


@vm_app.command("ls")
def vm_ls(
    all_: Annotated[bool, typer.Option("--all", help="include destroyed VMs")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List VMs."""
    vms = runtime.vm_manager(config.load()).list(include_destroyed=all_)
    rows = [
        {
            "id": v.id,
            "image": v.image,
            "state": v.state,
            "ip": v.ip,
            "tap": v.tap,
            "boot_seconds": v.boot_seconds,
            "failed_step": v.failed_step,
        }
        for v in vms
    ]
    if as_json:
        print(json.dumps(rows))
        return
    # "start s": from the VMM's start, a boot's or a resume's, to the agent's first answer.
    table = Table("id", "image", "state", "ip", "tap", "start s", "failed step")
    for r in rows:
        table.add_row(
            r["id"],
            r["image"],
            r["state"],
            r["ip"] or "",
            r["tap"],
            f"{r['boot_seconds']:.1f}" if r["boot_seconds"] else "",
            r["failed_step"] or "",
        )
    out.print(table)


@vm_app.command("hibernate")
def vm_hibernate(vm_id: str) -> None:
    """Snapshot a VM to disk and end its VMM; it keeps its address for `hearth vm resume`."""
    vms = runtime.vm_manager(config.load())
    try:
        with err.status(f"hibernating VM {vm_id}") as status:
            vms.hibernate(vm_id, on_step=lambda step: status.update(f"VM {vm_id}: {step}"))
    except Exception as e:  # noqa: BLE001 - the message is the user's answer
        raise fail(str(e)) from None
    out.print(f"hibernated {vm_id}")


@vm_app.command("resume")
def vm_resume(
    vm_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Restore a hibernated VM and wait for its agent; print the resume-to-agent seconds."""
    vms = runtime.vm_manager(config.load())
    try:
        with err.status(f"resuming VM {vm_id}") as status:
            vm = vms.resume(vm_id, on_step=lambda step: status.update(f"VM {vm_id}: {step}"))
    except Exception as e:  # noqa: BLE001 - the message is the user's answer
        raise fail(str(e)) from None
    if as_json:
        print(
            json.dumps(
                {
                    "id": vm.id,
                    "ip": vm.ip,
                    "state": vm.state,
                    "resume_to_agent_seconds": round(vm.boot_seconds, 2),
                }
            )
        )
    else:
        out.print(f"[green]VM {vm.id}[/green] resumed in {vm.boot_seconds:.2f}s: {vm.ip}")


@vm_app.command("console")
def vm_console(vm_id: str) -> None:
    """Print a VM's serial console log."""
    vms = runtime.vm_manager(config.load())
    log = vms.workdir(vm_id) / "console.log"
    if not log.exists():
        log = vms.console_archive(vm_id)
    if not log.exists():
        raise fail(f"no console log for VM {vm_id!r}")
    sys.stdout.write(log.read_text(errors="replace"))


@vm_app.command("rm")
def vm_rm(
    vm_ids: Annotated[list[str] | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all", help="every VM")] = False,
) -> None:
    """Destroy VMs: VMM process, TAP, lease and directory."""
    vms = runtime.vm_manager(config.load())
    for vm_id in [vm.id for vm in vms.list()] if all_ else vm_ids or []:
        try:
            vms.destroy(vm_id)
        except Exception as e:  # noqa: BLE001 - the message is the user's answer
            raise fail(str(e)) from None
        out.print(f"destroyed {vm_id}")


# -- network and reconciliation ------------------------------------------------------------


@net_app.command("up")
def net_up() -> None:
    """Create the VM network (namespace, bridge, veth, firewall) if missing."""
    runtime.vm_manager(config.load()).network.ensure()


@net_app.command("down")
def net_down() -> None:
    """Remove the VM network. Refuses while VMs live."""
    vms = runtime.vm_manager(config.load())
    if vms.list():
        raise fail("VMs still exist; remove them first (hearth vm ls)")
    vms.network.teardown()


def show_sign_in(console: Console, url: str, user: str, password: str) -> None:
    """Where to sign in, each value on a line of its own and never wrapped: a URL or a
    password broken over lines by an 80-column terminal cannot be copied."""
    console.print("[bold]Open[/bold] (in a browser on this machine):")
    console.print(url, soft_wrap=True, markup=False, highlight=False)
    console.print(f"and sign in as [bold]{user}[/bold] with the password:")
    console.print(password, soft_wrap=True, markup=False, highlight=False)


@app.command("demo")
def demo(
    port: Annotated[int, typer.Option(help="loopback port for your browser")] = 8000,
) -> None:
    """The whole demo: controller, demo identity provider, a browser VM; prints the
    connect_url to open, the stored credential status once you have signed in, then runs a
    prompt through the demo CLI in your CLI VM and shows its answer as it streams."""
    from hearth.demo import stack as demo_stack

    settings = config.load()
    image_build(["browser", "cli"])
    with demo_stack.stack(settings, port) as running:
        started = running.start_session("demo")
        show_sign_in(out, started["connect_url"], running.user, running.password)
        running.follow(
            started["session_id"],
            lambda e: out.print(
                f"session {e['status']}" + (f": {e['detail']}" if e.get("detail") else "")
            ),
        )
        status = running.api.get(
            f"/api/auth/session/{started['session_id']}/credentials/status"
        ).json()
        out.print(f"credential status: {json.dumps(status)}")
        if status.get("status") != "ready":
            raise typer.Exit(1)
        out.print("[bold]Prompt[/bold] through the demo CLI in your CLI VM:")
        for kind, data in running.prompt("demo", "Hello from Hearth"):
            out.print(f"{kind}: {data.get('data', '').rstrip() or json.dumps(data)}", markup=False)
            if kind == "error":
                raise typer.Exit(1)


@vm_app.command("demo")
def vm_demo(
    image: Annotated[str, typer.Option(help="browser or cli")] = "cli",
    keep: Annotated[bool, typer.Option(help="leave the VM and its namespaces running")] = False,
) -> None:
    """Build the image if needed, boot a VM from a fresh namespace, show its network and agent.

    The controller's part runs as this same command inside the new namespace (nsenter), so
    nothing here touches the host's own network.
    """
    image_build([image])
    with sandbox("hearth-demo", keep=keep) as controller:
        env = {**os.environ, "HEARTH_NETNS": f"{controller}-vm"}

        def hearth(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*nsenter(controller), sys.executable, "-m", "hearth", *args], env=env, check=False
            )

        try:
            booted = hearth("vm", "boot", "--image", image).returncode == 0
        finally:
            if not keep:
                hearth("vm", "rm", "--all")
                hearth("net", "down")
        if keep:
            out.print(
                f"kept: {' '.join(nsenter(controller))} "
                f"env HEARTH_NETNS={controller}-vm hearth vm ls"
            )
        if not booted:
            raise typer.Exit(1)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    uds: Annotated[str, typer.Option(help="listen on this Unix socket instead")] = "",
) -> None:
    """Run the controller: the HTTP API, the live view and the background work. Tells
    systemd when it is ready (Type=notify); SIGTERM stops it gracefully."""
    from hearth.api.app import create_app
    from hearth.api.serving import serve as serve_app

    where = {"uds": uds} if uds else {"host": host, "port": port}
    serve_app(create_app(config.load()), **where)


@app.command("install")
def install_cmd(
    unit_dir: Annotated[
        Path | None, typer.Option(help="where the systemd unit goes [/etc/systemd/system]")
    ] = None,
) -> None:
    """Install Hearth as a systemd service: a commented configuration file listing every
    setting (an existing one is kept), HEARTH_HOME, and the unit."""
    from hearth.install import UNIT_DIR, install

    try:
        done = install(unit_dir or UNIT_DIR)
    except SettingsError as e:
        raise fail(str(e)) from None
    out.print(f"unit: {done.unit}")
    kept = "written" if done.config_written else "kept (it was there already)"
    out.print(f"configuration: {done.config} {kept}")
    out.print("then: systemctl daemon-reload && systemctl enable --now hearth")


apikey_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(
    role: Annotated[str, typer.Option(help="app (the web product) or admin")] = "app",
    name: Annotated[str, typer.Option(help="a note on who holds it")] = "",
) -> None:
    """Create an API key and print it: it is shown this once and stored only as a hash."""
    from hearth.api.keys import create_key

    try:
        print(create_key(runtime.open_database(config.load()), role, name))
    except ValueError as e:
        raise fail(str(e)) from None


keys_app = typer.Typer(no_args_is_help=True, help="The master key that wraps credentials.")
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(
    new_key_env: Annotated[
        str,
        typer.Option(
            help="with HEARTH_MASTER_KEY: the environment variable holding the new base64 key"
        ),
    ] = "",
) -> None:
    """Re-wrap every credential's (and webhook secret's) data key under a new master key."""
    from hearth.store.crypto import CryptoError

    settings = config.load()
    store = runtime.controller(settings).credentials
    try:
        report = store.rotate_master_key(
            settings, new_key=os.environ.get(new_key_env) if new_key_env else None
        )
    except CryptoError as e:
        raise fail(str(e)) from None
    out.print(
        f"master key {report.new_key_id}: {report.rewrapped} records re-wrapped, "
        f"old keys dropped: {', '.join(report.dropped_key_ids) or 'none'}"
        + (f", {report.remaining} still under old keys" if report.remaining else "")
    )


egress_app = typer.Typer(no_args_is_help=True, help="What VMs reach: the egress audit.")
app.add_typer(egress_app, name="egress")


@egress_app.command("log")
def egress_log(
    vm: Annotated[str | None, typer.Option(help="only this VM's connections")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's VMs' connections")] = None,
    verdict: Annotated[str | None, typer.Option(help="allowed, refused or failed")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Every attempt of a VM to reach a name, with its verdict and why."""
    from hearth.core.egress import connection_view, connections

    if verdict not in (None, "allowed", "refused", "failed"):
        raise fail(f"--verdict must be allowed, refused or failed, not {verdict!r}")
    rows = connections(runtime.open_database(config.load()), vm, user, verdict, limit)
    if as_json:
        for row in rows:
            print(json.dumps(connection_view(row)))
        return
    table = Table("when", "vm", "user", "name", "port", "verdict", "reason", "up", "down")
    for c in rows:
        table.add_row(
            c.started_at.strftime("%H:%M:%S"),
            c.vm_id or "-",
            c.user_id or "-",
            c.name or "-",
            str(c.port),
            c.verdict,
            c.reason or "",
            str(c.bytes_up),
            str(c.bytes_down),
        )
    out.print(table)


db_app = typer.Typer(no_args_is_help=True, help="The database.")
app.add_typer(db_app, name="db")


@db_app.command("migrate")
def db_migrate() -> None:
    """Bring the database's schema to the latest migration (`hearth serve` does it too)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hearth.store.db import Database, connect_failure, shown_url

    url = config.load().db_url
    try:
        done = Database(url).migrate()
    except SQLAlchemyError as e:
        raise fail(f"cannot migrate {shown_url(url)}: {connect_failure(e)}") from None
    if done.before == done.after:
        out.print(f"the database is at the latest migration ({done.after}): nothing to do")
    else:
        out.print(f"migrated the database from {done.before or 'an empty schema'} to {done.after}")


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON list of the checks")
    ] = False,
) -> None:
    """Check the host and say how to fix each problem; exit code 0 only when all pass."""
    from hearth import doctor

    checks = doctor.run_checks(config.load())
    if as_json:
        print(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        show_checks(out, checks)
    if not doctor.all_passed(checks):
        raise typer.Exit(1)


_STATUS_STYLE = {
    "pass": ("ok", "green"),
    "fail": ("FAIL", "bold red"),
    "skipped": ("skip", "dim"),
    "info": ("info", "cyan"),
}


def show_checks(console: Console, checks: list[Check]) -> None:
    """One line per check and one per fix, never wrapped, so paths, URLs and commands can be
    copied whatever the terminal's width."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        label, style = _STATUS_STYLE[c.status.value]
        line = Text.assemble((f"{label:<4}", style), f"  {c.name:<{width}}  {c.message}")
        console.print(line, soft_wrap=True, highlight=False)
        if c.fix:
            console.print(
                f"{'':4}  {'':<{width}}  fix: {c.fix}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
    failures = sum(c.status.value == "fail" for c in checks)
    console.print(
        f"{len(checks)} checks: {failures} failed"
        if failures
        else f"{len(checks)} checks: all passed",
        highlight=False,
    )


@app.command("reconcile")
def reconcile_cmd() -> None:
    """Adopt live VMs and remove whatever a crash left behind."""
    report = reconcile(runtime.vm_manager(config.load()))
    out.print(report)
