"""Prometheus metrics (hearth.metrics) scraped over real HTTP from the controller's API
around the core rig (tests/core_rig.py: the real controller, each VM's process the real
guest agent, the demo CLI's real login and prompt against the real demo IdP), parsed with
prometheus_client's own parser.

Covered: after a completed and a denied sign-in, prompts through the API (the first boots
the user's CLI VM, the second writes refreshed credentials back, the third resumes the VM
from hibernation), a create whose boot step fails and egress records through the real
audit writer, every metric says so, and the VM and lease gauges say what the database
says; on a controller with room for one VM and a warm pool of one, the queue's gauge and
histogram (admitted and cancelled), the admissions refused (a full queue, a prompt without
room, one too many prompts), the memory budget and what is reserved of it, and the pool's
VMs by mark; /metrics refuses a request without a key (401) and an app key (403); the
metrics_listen listener serves the same without a key; the Grafana dashboard and the
README use exactly the metric names there are.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from hearth import metrics
from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.core.egress import Audit
from hearth.core.vms import VmError
from hearth.net.egress.policy import EgressRecord, Verdict
from hearth.store.models import AuthSessionStatus, EgressConnection, VmState
from hearth.waiting import wait_for
from tests.core_rig import Rig, build_rig, serve_rig
from tests.unit.test_capacity import VM_MIB, capacity_rig
from tests.unit.test_cli_vms import sign_in as stored_sign_in

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-hearth.json"
PROVIDER = "demo"
CREDENTIALS = ".hearth-demo/credentials.json"
WAIT = 30.0
SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


@dataclass
class Served:
    rig: Rig
    url: str
    listener: str  # the metrics_listen listener's URL
    keys: dict[str, str]  # role -> API key

    def call(self, method: str, path: str, role: str = "app", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=WAIT, **kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    listen = f"127.0.0.1:{free_port()}"
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        build_rig(tmp_path_factory.mktemp("rig"), monkeypatch, metrics_listen=listen) as rig,
        serve_rig(rig) as url,
    ):
        keys = {role: create_key(rig.controller.db, role) for role in ("app", "admin")}
        yield Served(rig, url, f"http://{listen}/metrics", keys)


# -- what the controller is made to do ------------------------------------------------------


def wait_session(served: Served, session_id: str, wanted: str) -> dict:
    def reached() -> dict | None:
        view = served.call("GET", f"/api/auth/session/{session_id}").json()
        if view["status"] != wanted and view["status"] in ("completed", "failed", "expired"):
            raise AssertionError(f"session {view['status']} ({view['error']}), not {wanted}")
        return view if view["status"] == wanted else None

    return wait_for(reached, WAIT, f"session {session_id} {wanted}")


def sign_in(served: Served, user_id: str, deny: bool = False) -> None:
    """A sign-in through the API, the user approving (or denying) in the VM's browser."""
    started = served.call(
        "POST", "/api/auth/start", json={"user_id": user_id, "provider": PROVIDER}
    )
    assert started.status_code == 202, started.text
    session_id = started.json()["session_id"]
    wait_session(served, session_id, AuthSessionStatus.awaiting_user)
    oauth_url = served.call("GET", f"/api/auth/session/{session_id}/oauth").json()["url"]
    if deny:  # the redirect a provider sends when the user denies (RFC 6749 §4.1.2.1)
        query = parse_qs(urlsplit(oauth_url).query)
        params = {"state": query["state"][0], "error": "access_denied"}
        assert httpx.get(query["redirect_uri"][0], params=params).status_code == 400
        wait_session(served, session_id, AuthSessionStatus.failed)
    else:
        assert served.rig.approve(oauth_url).status_code == 200
        wait_session(served, session_id, AuthSessionStatus.completed)
    vm_id = served.rig.controller.sessions.get(session_id).vm_id
    wait_for(
        lambda: served.rig.vms.get(vm_id).state == VmState.destroyed, WAIT, "the browser VM's end"
    )


def prompt(served: Served, user_id: str) -> dict:
    """A prompt through the API, its stream read to the end; the `done` event's data."""
    body = {"user_id": user_id, "provider": PROVIDER, "prompt": "hello"}
    with httpx.Client(timeout=WAIT) as http:
        headers = {"Authorization": f"Bearer {served.keys['app']}"}
        text = http.post(served.url + "/api/prompts", json=body, headers=headers).text
    done = re.search(r"event: done\ndata: (.*)\n", text)
    assert done, text
    return json.loads(done.group(1))


def store_expired(rig: Rig, user_id: str) -> None:
    """Store the tokens again with a file saying the access token expired a minute ago,
    so the demo CLI refreshes it on its next prompt."""
    files, info = rig.controller.credentials.current(user_id, PROVIDER)
    data = {**json.loads(files[CREDENTIALS]), "expires_at": int(time.time()) - 60}
    rig.controller.credentials.put(
        user_id,
        PROVIDER,
        {CREDENTIALS: json.dumps(data).encode()},
        account_email=info.account_email,
        expires_at=datetime.fromtimestamp(data["expires_at"], UTC),
        after_version=info.version,
    )


def egress_attempts(rig: Rig) -> None:
    """Through the real audit writer: an allowed connection reported as it opens and as it
    ends (one connection), another allowed, and a refused name."""
    audit = Audit(rig.controller.db)
    opened = EgressRecord("127.0.0.9", "tls", 443, datetime.now(UTC), Verdict.allowed)
    audit(opened)
    audit(EgressRecord("127.0.0.9", "http", 80, datetime.now(UTC), Verdict.allowed, duration=0.1))
    audit(EgressRecord("127.0.0.9", "dns", 53, datetime.now(UTC), Verdict.refused, "not allowed"))
    # The first three written before the connection's end is reported: it ends as an update.
    wait_for(lambda: egress_rows(rig) == 3, 10, "the audit to write the first records")
    audit(replace(opened, duration=1.0, bytes_down=100))
    audit.close()


def egress_rows(rig: Rig) -> int:
    with rig.controller.db.session() as s:
        return s.scalar(select(func.count()).select_from(EgressConnection))


# -- reading a scrape ------------------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """Each sample's (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- the tests -------------------------------------------------------------------------------


def test_a_scrape_counts_what_the_controller_did_and_shows_the_databases_state(served):
    rig = served.rig
    metrics.reset()
    sign_in(served, "ada")
    sign_in(served, "bob", deny=True)
    first = prompt(served, "ada")  # boots ada's CLI VM
    store_expired(rig, "ada")
    refreshed = prompt(served, "ada")
    vm = rig.controller.cli_vms.vm_of("ada")
    rig.vms.hibernate(vm.id)
    resumed = prompt(served, "ada")
    rig.driver.failing.add("start")
    with pytest.raises(VmError):
        rig.vms.create("cli")
    egress_attempts(rig)
    assert [first["status"], refreshed["status"], resumed["status"]] == ["completed"] * 3
    assert refreshed["credentials"] == "updated"

    answer = served.call("GET", "/metrics", role="admin")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = scrape(answer.text)

    demo_completed = {"provider": PROVIDER, "outcome": "completed"}
    demo_failed = {"provider": PROVIDER, "outcome": "failed"}
    assert value(samples, "hearth_sign_ins_total", **demo_completed) == 1
    assert value(samples, "hearth_sign_ins_total", **demo_failed) == 1
    assert value(samples, "hearth_sign_in_duration_seconds_count", **demo_completed) == 1
    assert value(samples, "hearth_sign_in_duration_seconds_count", **demo_failed) == 1
    assert 0 < value(samples, "hearth_sign_in_duration_seconds_sum", **demo_completed) < WAIT * 3
    # Two browser VMs and ada's CLI VM booted; the failed create's agent never answered.
    process = rig.driver.name
    assert value(samples, "hearth_vm_boot_seconds_count", image="browser", vmm=process) == 2
    assert value(samples, "hearth_vm_boot_seconds_count", image="cli", vmm=process) == 1
    assert value(samples, "hearth_vm_resume_seconds_count", image="cli", vmm=process) == 1
    resume_sum = value(samples, "hearth_vm_resume_seconds_sum", image="cli", vmm=process)
    assert resume_sum == pytest.approx(rig.vms.get(vm.id).boot_seconds)
    assert value(samples, "hearth_prompts_total", **demo_completed) == 3
    assert value(samples, "hearth_prompt_duration_seconds_count", **demo_completed) == 3
    assert value(samples, "hearth_credential_refreshes_written_back_total", provider=PROVIDER) == 1
    assert value(samples, "hearth_plan_steps_failed_total", plan="create", step="boot") == 1
    assert value(samples, "hearth_egress_connections_total", verdict="allowed", protocol="tls") == 1
    assert (
        value(samples, "hearth_egress_connections_total", verdict="allowed", protocol="http") == 1
    )
    assert value(samples, "hearth_egress_connections_total", verdict="refused", protocol="dns") == 1

    # The gauges are the database's: ada's ready CLI VM and the failed one (browser VMs gone).
    assert value(samples, "hearth_vms", state="ready", image="cli") == 1
    assert value(samples, "hearth_vms", state="failed", image="cli") == 1
    assert not [key for key in samples if key[0] == "hearth_vms" and ("image", "browser") in key[1]]
    leased = len(rig.vms.pool.leases())
    assert leased == 2  # the failed VM keeps its address until it is destroyed
    assert value(samples, "hearth_ip_leases_used") == leased
    assert value(samples, "hearth_ip_leases_free") == len(rig.vms.pool.candidates()) - leased

    [failed] = [vm for vm in rig.vms.list() if vm.state == VmState.failed]
    rig.vms.destroy(failed.id)  # a scrape now sees it gone
    after = scrape(served.call("GET", "/metrics", role="admin").text)
    assert value(after, "hearth_vms", state="failed", image="cli") is None
    assert value(after, "hearth_ip_leases_used") == leased - 1


def test_the_queue_refusals_memory_and_pool_are_measured(tmp_path, monkeypatch):
    metrics.reset()
    with (
        capacity_rig(
            tmp_path,
            monkeypatch,
            1,
            auth_queue_max=1,
            max_prompts_per_user=1,
            pool_browser=1,
            pool_boot_interval=3600.0,  # one pool VM, not refilled once taken
        ) as rig,
        serve_rig(rig) as url,
    ):
        keys = {role: create_key(rig.controller.db, role) for role in ("app", "admin")}
        api = Served(rig, url, "", keys)
        mib = 1024 * 1024

        def now() -> dict:
            return scrape(api.call("GET", "/metrics", role="admin").text)

        def started(user_id: str) -> httpx.Response:
            return api.call(
                "POST", "/api/auth/start", json={"user_id": user_id, "provider": PROVIDER}
            )

        wait_for(lambda: [vm for vm in rig.vms.list() if vm.pool == "warm"], WAIT, "a warm pool VM")
        warm = now()
        assert value(warm, "hearth_pool_vms", mark="warm") == 1
        assert value(warm, "hearth_pool_vms", mark="warming") == 0
        assert (
            value(warm, "hearth_vm_memory_budget_bytes") == rig.controller.capacity.budget_mib * mib
        )
        assert value(warm, "hearth_vm_memory_reserved_bytes") == 0  # hibernated, it costs nothing
        assert value(warm, "hearth_sign_ins_queued") == 0

        stored_sign_in(rig, "ua")  # on the warm VM, never queued
        holder = started("ub").json()  # holds the only room
        wait_session(api, holder["session_id"], AuthSessionStatus.awaiting_user)
        queued = started("uc").json()
        assert queued["status"] == "queued"
        assert started("ud").status_code == 503  # the queue is full
        body = {"user_id": "ua", "provider": PROVIDER, "prompt": "hello"}
        assert api.call("POST", "/api/prompts", json=body).status_code == 503  # no room

        full = now()
        assert value(full, "hearth_sign_ins_queued") == 1
        assert value(full, "hearth_vm_memory_reserved_bytes") == VM_MIB * mib
        assert value(full, "hearth_pool_vms", mark="warm") == 0
        assert value(full, "hearth_admissions_refused_total", reason="queue_full") == 1
        assert value(full, "hearth_admissions_refused_total", reason="no_cli_vm_room") == 1
        assert value(full, "hearth_sign_in_queue_seconds_count", outcome="admitted") is None

        api.call("POST", f"/api/auth/session/{queued['session_id']}/cancel")
        admitted = started("ue").json()
        assert admitted["status"] == "queued"
        api.call("POST", f"/api/auth/session/{holder['session_id']}/cancel")
        wait_session(api, admitted["session_id"], AuthSessionStatus.awaiting_user)
        api.call("POST", f"/api/auth/session/{admitted['session_id']}/cancel")
        wait_for(lambda: rig.controller.capacity.usage().vms == 0, WAIT, "the browser VMs' end")

        running = rig.controller.prompts.create("ua", PROVIDER, "hello")
        assert api.call("POST", "/api/prompts", json=body).status_code == 429
        assert list(rig.controller.prompts.stream(running.id))[-1][1]["status"] == "completed"

        after = now()
        assert value(after, "hearth_sign_ins_queued") == 0
        for outcome in ("admitted", "cancelled"):
            assert value(after, "hearth_sign_in_queue_seconds_count", outcome=outcome) == 1
            assert 0 < value(after, "hearth_sign_in_queue_seconds_sum", outcome=outcome) < WAIT
        assert value(after, "hearth_admissions_refused_total", reason="too_many_prompts") == 1
        assert value(after, "hearth_vm_memory_reserved_bytes") == VM_MIB * mib  # ua's CLI VM


def test_metrics_need_an_admin_key(served):
    assert httpx.get(served.url + "/metrics").status_code == 401
    assert served.call("GET", "/metrics", role="app").status_code == 403
    bad = httpx.get(served.url + "/metrics", headers={"Authorization": "Bearer hth_0_x"})
    assert bad.status_code == 401


def test_the_metrics_listener_serves_the_same_metrics_without_a_key(served):
    metrics.reset()
    metrics.plan_step_failed("destroy", "stop-vmm")
    over_api = scrape(served.call("GET", "/metrics", role="admin").text)
    answer = httpx.get(served.listener)
    assert answer.status_code == 200
    listened = scrape(answer.text)
    assert value(listened, "hearth_plan_steps_failed_total", plan="destroy", step="stop-vmm") == 1
    assert value(listened, "hearth_ip_leases_free") == value(over_api, "hearth_ip_leases_free")


def test_a_metrics_listener_whose_address_is_taken_says_where(served):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        where = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = served.rig.settings.model_copy(update={"metrics_listen": where})
        with pytest.raises(metrics.MetricsListenError, match=f"HEARTH_METRICS_LISTEN {where}: "):
            metrics.listen(replace(served.rig.controller, settings=settings))


def test_a_bad_metrics_listen_is_refused_naming_what_is_wrong():
    with pytest.raises(ValueError, match="not host:port"):
        Settings(metrics_listen="9464")
    with pytest.raises(ValueError, match="port must be 1-65535"):
        Settings(metrics_listen="127.0.0.1:99999")
    assert Settings(metrics_listen="[::1]:9464").metrics_listen == "[::1]:9464"


def sample_family(name: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in metrics.names():
            return name.removesuffix(suffix)
    return name


def test_the_grafana_dashboard_queries_exactly_the_metrics_there_are():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert queries
    used = {sample_family(n) for q in queries for n in re.findall(r"\bhearth_[a-z_]+", q)}
    assert used == metrics.names()


def test_the_readme_names_every_metric():
    readme = (ROOT / "README.md").read_text()
    documented = {sample_family(n) for n in re.findall(r"`(hearth_[a-z_]+)", readme)}
    assert metrics.names() <= documented
