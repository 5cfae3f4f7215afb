"""Measure the egress proxy's cost: added first-byte latency, connections/s, memory.

The real controller (`hearth serve`) runs in a namespace with the fake internet behind it
(tests/egress_rig.py); a fake browser VM on the VM bridge reaches claude.com through the
gateway (EGRESS), and a client in the controller's namespace reaches the web server straight
at its address (DIRECT). Measured: the first byte (from the TCP connect's start to the
response's first byte, TLS handshake and `GET /` included; the VM's DNS lookup of the name,
through the gateway, is timed apart), connections/s of short HTTPS connections at a given
concurrency, the controller's RSS and peak RSS before and after, and whether the audit holds
every egress connection. Both paths run in the same invocation, interleaved: the latency in
alternating rounds, the load in DIRECT, EGRESS, EGRESS, DIRECT halves. Each client is an
asyncio subprocess in its path's namespace.
Run as root from the repository root:  python -m bench.egress --runs 200 --concurrency 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import exit_on_sigterm
from hearth.demo.sandbox import nsenter
from hearth.waiting import Timeout, wait_for
from tests.egress_rig import FakeVm, Rig, rig
from tests.fake_internet import WEB

NAME = "claude.com"
GOAL_ADDED_MS, GOAL_RATE = 5.0, 500.0
ROUNDS = 10  # latency rounds per path, alternating

# The client, run with `python -c` in a namespace after a line setting CFG; one JSON line.
CLIENT = r'''
import asyncio, json, socket, ssl, time
ctx = ssl.create_default_context(cafile=CFG["ca"])
NAME = CFG["name"]
REQUEST = f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()
errors = []

async def fetch(address):
    """Connect, TLS, GET /, read to the close: seconds from the connect to the first byte."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(address, 443, ssl=ctx, server_hostname=NAME)
    try:
        writer.write(REQUEST)
        first = await reader.read(1)
        first_byte = time.perf_counter() - start
        body = first + await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
    if not body.startswith(b"HTTP/1.1 200") or b"hello from" not in body:
        raise ValueError(f"unexpected answer {body[:60]!r}")
    return first_byte

async def attempt(address):
    try:
        return await asyncio.wait_for(fetch(address), 15)
    except (OSError, ssl.SSLError, ValueError, asyncio.TimeoutError) as e:
        errors.append(f"{type(e).__name__}: {e}")
        return None

async def latency(address, runs):
    warm = await attempt(address)  # warm-up, not timed (its failure is counted)
    times = [t for _ in range(runs) if (t := await attempt(address)) is not None]
    return times, len(times) + (warm is not None)

async def load(address, concurrency, seconds):
    deadline, ok = time.monotonic() + seconds, [0]
    async def worker():
        while time.monotonic() < deadline:
            done = await attempt(address)  # not `ok[0] += await ...`: that loses updates
            ok[0] += done is not None
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok[0], time.monotonic() - started

dns, address = [], CFG.get("address")
for _ in range(CFG["lookups"]):  # through the namespace's resolver: the gateway for a VM
    start = time.perf_counter()
    address = socket.getaddrinfo(NAME, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    dns.append(time.perf_counter() - start)
if CFG["mode"] == "latency":
    times, ok = asyncio.run(latency(address, CFG["runs"]))
    out = {"first_byte": times, "ok": ok, "dns": dns}
else:
    ok, seconds = asyncio.run(load(address, CFG["concurrency"], CFG["seconds"]))
    out = {"ok": ok, "seconds": seconds}
print(json.dumps({**out, "address": address, "failed": len(errors), "errors": errors[:3]}))
'''


def run_client(r: Rig, vm: FakeVm, path: str, ca: Path, **cfg: object) -> dict:
    """The client in DIRECT's namespace (the controller's) or EGRESS's (the VM's)."""
    where = {"address": WEB, "lookups": 0} if path == "direct" else {"lookups": 1}
    code = f"CFG = { ({'ca': str(ca), 'name': NAME, **where, **cfg})!r}\n{CLIENT}"
    if path == "direct":
        done = subprocess.run(
            [*nsenter(r.controller_ns), sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=900,
        )
    else:
        done = vm.python(code, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{path} client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_mib(pid: int) -> dict[str, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def ms(values: list[float], stat: str) -> float:
    if not values:
        return float("nan")
    if stat == "p90":
        return 1000 * (statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0])
    return 1000 * statistics.median(values)


def measure(r: Rig, args: argparse.Namespace, ca: Path) -> None:
    vm = r.browser_vm("claude_code")
    paths = ("direct", "egress")
    first: dict[str, list[float]] = {p: [] for p in paths}
    failed, errors, dns = dict.fromkeys(paths, 0), {p: [] for p in paths}, []
    egress_ok = 0  # successful egress connections, warm-ups included, for the audit
    before = memory_mib(r.controller_pid)
    sizes = [args.runs // ROUNDS + (i < args.runs % ROUNDS) for i in range(ROUNDS)]
    for i, size in enumerate(s for s in sizes if s):
        for path in paths if i % 2 == 0 else paths[::-1]:
            got = run_client(
                r, vm, path, ca, mode="latency", runs=size, lookups=size if path == "egress" else 0
            )
            first[path] += got["first_byte"]
            failed[path] += got["failed"]
            errors[path] += got["errors"]
            dns += got.get("dns", [])
            egress_ok += got["ok"] if path == "egress" else 0
    load = {p: {"ok": 0, "failed": 0, "seconds": 0.0} for p in paths}
    for path in ("direct", "egress", "egress", "direct"):
        got = run_client(
            r, vm, path, ca, mode="load", concurrency=args.concurrency, seconds=args.seconds / 2
        )
        for key in ("ok", "failed", "seconds"):
            load[path][key] += got[key]
        errors[path] += got["errors"]
        egress_ok += got["ok"] if path == "egress" else 0
    after = memory_mib(r.controller_pid)

    print(f"first byte over HTTPS (connect, TLS, GET / for {NAME}), {args.runs} runs each, ms")
    print(f"{'path':<8} {'median':>8} {'p90':>8} {'failed':>7}")
    for path in paths:
        print(
            f"{path:<8} {ms(first[path], 'median'):>8.2f} {ms(first[path], 'p90'):>8.2f} "
            f"{failed[path]:>7}"
        )
    added = ms(first["egress"], "median") - ms(first["direct"], "median")
    ratio = ms(first["egress"], "median") / ms(first["direct"], "median")
    print(
        f"added to the first byte: {added:.2f} ms (egress/direct {ratio:.2f}x); "
        f"goal <= {GOAL_ADDED_MS:g} ms: {'met' if added <= GOAL_ADDED_MS else 'NOT met'}"
    )
    print(
        f"DNS lookup of {NAME} via the gateway: median {ms(dns, 'median'):.2f} ms "
        f"({len(dns)} lookups)"
    )
    print(
        f"connections/s (connect, TLS, GET, read to close), concurrency {args.concurrency}, "
        f"{args.seconds:g} s per path"
    )
    rate = {p: load[p]["ok"] / load[p]["seconds"] for p in paths}
    for path in paths:
        print(
            f"{path:<8} {rate[path]:>8.1f}/s  ok {load[path]['ok']:>6}  "
            f"failed {load[path]['failed']}"
        )
    print(
        f"egress/direct {rate['egress'] / (rate['direct'] or float('nan')):.2f}x; "
        f"goal >= {GOAL_RATE:g}/s: {'met' if rate['egress'] >= GOAL_RATE else 'NOT met'}"
    )
    print(
        f"controller memory, MiB: RSS {before['VmRSS']} before the load, {after['VmRSS']} "
        f"after; peak (VmHWM) {before['VmHWM']} before, {after['VmHWM']} after"
    )
    for path in paths:
        for error in dict.fromkeys(errors[path]):
            print(f"  {path} error: {error}")

    def allowed() -> int:
        return sum(c.protocol == "tls" and c.verdict == "allowed" for c in r.audit(vm))

    with contextlib.suppress(Timeout):  # the count below says what is missing
        wait_for(lambda: allowed() >= egress_ok, 30, "the audit", interval=0.5)
    print(f"audit: {allowed()} allowed tls rows for {egress_ok} egress connections")


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="first-byte runs per path")
    parser.add_argument("--concurrency", type=int, default=32, help="connections at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-bench-egress-") as tmp, rig(Path(tmp)) as r:
        ca = Path(tmp) / "ca.pem"
        ca.write_bytes(r.inet.ca.pem)
        measure(r, args, ca)


if __name__ == "__main__":
    main()
