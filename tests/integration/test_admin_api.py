"""The operator's API (/api/admin/...), in-process with the real app and database: what an
admin key sees and does, and that an app key gets 403 there while an admin key can do what
an app key can. No VM boots here: VM records are made as a crashed create leaves them, and
the lifecycle itself is tested in tests/unit/test_vm_plans.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from hearth.api.keys import create_key
from hearth.core.capacity import default_budget_mib
from hearth.metrics import MIB
from hearth.store.models import AuthSession, AuthSessionStatus, Vm, VmState
from tests.unit.test_metrics import scrape, value

FAR = datetime(2099, 1, 1, tzinfo=UTC)
ADMIN_ROUTES = [
    ("get", "/api/admin/vms"),
    ("get", "/api/admin/vms/0123456789ab"),
    ("get", "/api/admin/vms/0123456789ab/console"),
    ("delete", "/api/admin/vms/0123456789ab"),
    ("get", "/api/admin/sessions"),
    ("post", f"/api/admin/sessions/{'0' * 32}/cancel"),
    ("get", "/api/admin/users"),
    ("get", "/api/admin/users/ada"),
    ("get", "/api/admin/host"),
    ("get", "/api/admin/keys"),
    ("post", "/api/admin/keys"),
    ("delete", "/api/admin/keys/0123456789ab"),
    ("get", "/api/admin/egress"),
    ("get", "/api/admin/webhooks"),
    ("post", "/api/admin/webhooks"),
    ("get", f"/api/admin/webhooks/{'0' * 32}"),
    ("patch", f"/api/admin/webhooks/{'0' * 32}"),
    ("delete", f"/api/admin/webhooks/{'0' * 32}"),
    ("get", f"/api/admin/webhooks/{'0' * 32}/deliveries"),
]


def bearer(client: TestClient, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_key(client.app.state.controller.db, role)}"}


@pytest.fixture
def admin(client: TestClient) -> dict[str, str]:
    return bearer(client, "admin")


def recorded_vm(client: TestClient, vm_id: str, **fields) -> Vm:
    """A VM record with `fields`, as the controller's plans would have left it."""
    vm = Vm(
        id=vm_id, vmm="qemu", tap=f"hth{vm_id[:11]}", netns="", agent_token="never-shown", **fields
    )
    with client.app.state.controller.db.session() as s:
        s.add(vm)
        s.commit()
    return vm


def failed_vm(client: TestClient, console: str = "") -> str:
    """A VM record as a create that failed at boot leaves it, with a console log."""
    ctl = client.app.state.controller
    vm = recorded_vm(
        client,
        "0123456789ab",
        image="cli",
        state=VmState.failed,
        failed_step="boot",
        error="the VMM refused",
        user_id="ada",
    )
    workdir = ctl.vms.workdir(vm.id)
    workdir.mkdir(parents=True)
    (workdir / "console.log").write_text(console)
    return vm.id


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_an_app_key_with_403_and_no_key_with_401(
    client: TestClient, method: str, path: str
):
    assert getattr(client, method)(path).status_code == 401
    refused = getattr(client, method)(path, headers=bearer(client, "app"))
    assert refused.status_code == 403, refused.text
    assert refused.json() == {"error": "this route needs an admin key", "code": "forbidden"}


def test_an_admin_key_can_do_what_an_app_key_can(client: TestClient, admin):
    started = client.post(
        "/api/auth/start", json={"user_id": "u", "provider": "nope"}, headers=admin
    )
    assert started.status_code == 400  # past the key check: the provider is what is wrong
    assert client.get("/api/users/ada/prompts", headers=admin).status_code == 200


def test_vms_are_listed_shown_with_their_console_and_destroyed(client: TestClient, admin):
    vm_id = failed_vm(client, console="hearth-net: configured eth0\nhearth-agent: failed\n")

    listed = client.get("/api/admin/vms", headers=admin).json()["vms"]
    assert [v["vm_id"] for v in listed] == []  # a failed VM is not live
    failed = client.get("/api/admin/vms?state=failed", headers=admin).json()["vms"]
    assert [(v["vm_id"], v["failed_step"], v["error"]) for v in failed] == [
        (vm_id, "boot", "the VMM refused")
    ]
    shown = client.get(f"/api/admin/vms/{vm_id}", headers=admin)
    assert shown.status_code == 200 and "never-shown" not in shown.text
    tail = client.get(f"/api/admin/vms/{vm_id}/console?lines=1", headers=admin).json()
    assert tail == {"vm_id": vm_id, "lines": ["hearth-agent: failed"]}

    destroyed = client.delete(f"/api/admin/vms/{vm_id}", headers=admin)
    assert destroyed.status_code == 200 and destroyed.json()["state"] == "destroyed"
    assert not client.app.state.controller.vms.workdir(vm_id).exists()
    kept = client.get(f"/api/admin/vms/{vm_id}/console", headers=admin).json()["lines"]
    assert kept == ["hearth-net: configured eth0", "hearth-agent: failed"]  # archived
    assert client.get("/api/admin/vms/ffffffffffff", headers=admin).status_code == 404


def test_a_warm_pool_vm_is_listed_with_its_mark_and_provider(client: TestClient, admin):
    recorded_vm(
        client,
        "0123456789cd",
        image="browser",
        state=VmState.hibernated,
        pool="warm",
        pool_provider="demo",
    )
    (listed,) = client.get("/api/admin/vms", headers=admin).json()["vms"]
    assert (listed["pool"], listed["pool_provider"], listed["user_id"]) == ("warm", "demo", None)


def test_sessions_are_listed_filtered_and_cancelled(client: TestClient, admin):
    ctl = client.app.state.controller
    with ctl.db.session() as s:
        for n, (user, status) in enumerate(
            [("ada", AuthSessionStatus.completed), ("bob", AuthSessionStatus.awaiting_user)]
        ):
            s.add(
                AuthSession(
                    id=f"{n:032x}",
                    user_id=user,
                    provider="demo",
                    status=status,
                    live_token_hash="0" * 64,
                    expires_at=FAR,
                )
            )
        s.commit()

    everything = client.get("/api/admin/sessions", headers=admin).json()["sessions"]
    assert sorted(s["user_id"] for s in everything) == ["ada", "bob"]
    waiting = client.get("/api/admin/sessions?status=awaiting_user", headers=admin).json()
    assert [s["user_id"] for s in waiting["sessions"]] == ["bob"]
    assert client.get("/api/admin/sessions?status=nope", headers=admin).status_code == 422

    cancelled = client.post(f"/api/admin/sessions/{1:032x}/cancel", headers=admin).json()
    assert (cancelled["status"], cancelled["timeline"][-1]["detail"]) == (
        "cancelled",
        "cancelled through the API",
    )
    done = client.post(f"/api/admin/sessions/{0:032x}/cancel", headers=admin).json()
    assert done["status"] == "completed"  # an ended session stays as it ended
    assert client.post(f"/api/admin/sessions/{9:032x}/cancel", headers=admin).status_code == 404


def test_users_show_their_providers_vm_and_prompts(client: TestClient, admin):
    ctl = client.app.state.controller
    ctl.credentials.put("ada", "demo", {"f.json": b"{}"}, account_email="ada@example.test")

    users = client.get("/api/admin/users", headers=admin).json()["users"]
    assert [(u["user_id"], [c["provider"] for c in u["credentials"]], u["vm"]) for u in users] == [
        ("ada", ["demo"], None)
    ]
    ada = client.get("/api/admin/users/ada", headers=admin).json()
    assert ada["credentials"][0]["account_email"] == "ada@example.test"
    assert ada["prompts"] == []
    assert client.get("/api/admin/users/nobody", headers=admin).status_code == 404


def test_the_host_shows_memory_vms_by_state_and_the_ip_pool(client: TestClient, admin):
    failed_vm(client)
    host = client.get("/api/admin/host", headers=admin).json()
    assert 0 < host["memory_available_mib"] <= host["memory_total_mib"]
    assert host["vms_by_state"] == {"failed": 1}  # counted, though it holds no memory
    assert host["vm_memory_mib"] == 0
    assert (host["addresses"], host["addresses_leased"]) == (253, 0)  # a /24 less the gateway
    assert host["leases"] == []


def test_the_host_lists_each_lease_with_its_vm_and_when_it_was_made(client: TestClient, admin):
    vm_id = failed_vm(client)
    before = datetime.now(UTC)
    ip = client.app.state.controller.vms.pool.lease(vm_id)
    host = client.get("/api/admin/host", headers=admin).json()
    [lease] = host["leases"]
    assert (lease["ip"], lease["vm_id"], host["addresses_leased"]) == (ip, vm_id, 1)
    leased_at = datetime.fromisoformat(lease["leased_at"])
    assert before - timedelta(seconds=1) <= leased_at <= datetime.now(UTC)


def test_the_host_shows_the_vm_memory_budget_and_what_running_vms_reserve_of_it(
    client: TestClient, admin
):
    ctl = client.app.state.controller
    recorded_vm(client, "0123456789ab", image="cli", state=VmState.ready, user_id="ada")
    recorded_vm(client, "abcdef012345", image="browser", state=VmState.hibernated)
    host = client.get("/api/admin/host", headers=admin).json()
    # No budget set: the host's RAM less its reserve; only the running VM takes of it.
    assert host["vm_memory_budget_mib"] == default_budget_mib(host["memory_total_mib"])
    assert host["vm_memory_reserved_mib"] == ctl.capacity.cost("cli", "qemu").total_mib
    assert host["vm_memory_reserved_mib"] > host["vm_memory_mib"] == ctl.settings.cli_memory_mib
    # The figures the metrics give, from the same place.
    samples = scrape(client.get("/metrics", headers=admin).text)
    assert value(samples, "hearth_vm_memory_budget_bytes") == host["vm_memory_budget_mib"] * MIB
    assert value(samples, "hearth_vm_memory_reserved_bytes") == (
        host["vm_memory_reserved_mib"] * MIB
    )


def test_keys_are_listed_created_once_and_revoked(client: TestClient, admin):
    created = client.post("/api/admin/keys", json={"role": "app", "name": "web"}, headers=admin)
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(f"hth_{body['key_id']}_") and body["revoked_at"] is None
    new_key = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/api/users/ada/prompts", headers=new_key).status_code == 200

    listed = client.get("/api/admin/keys", headers=admin)
    assert body["key"] not in listed.text  # shown once, stored as a hash
    assert {(k["role"], k["name"]) for k in listed.json()["keys"]} >= {("app", "web")}

    revoked = client.delete(f"/api/admin/keys/{body['key_id']}", headers=admin).json()
    assert revoked["revoked_at"] is not None
    assert client.get("/api/users/ada/prompts", headers=new_key).status_code == 401
    assert client.delete("/api/admin/keys/ffffffffffff", headers=admin).status_code == 404
    own = admin["Authorization"].split("_")[1]
    assert client.delete(f"/api/admin/keys/{own}", headers=admin).status_code == 409
    bad = client.post("/api/admin/keys", json={"role": "root"}, headers=admin)
    assert bad.status_code == 422
