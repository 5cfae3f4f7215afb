"""The store on every backend (SQLite and a real PostgreSQL): schema, rows, and the IP pool."""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from hearth.net.ippool import IpPool, PoolExhausted, UnknownVm
from hearth.store.db import Database, head_revision
from hearth.store.models import Base, IpLease, Vm, VmState

SMALL = ipaddress.IPv4Interface("192.0.2.1/29")  # TEST-NET-1: hosts .1-.6, .1 is the gateway
SMALL_FREE = [f"192.0.2.{n}" for n in range(2, 7)]
THREADS = 12  # racers for 13 addresses (a /28 less its gateway)


def add_vms(db: Database, *vm_ids: str) -> None:
    with db.session() as s:
        s.add_all(
            Vm(id=vm_id, image="cli", vmm="qemu", tap=f"hth{vm_id}", agent_token=f"tok-{vm_id}")
            for vm_id in vm_ids
        )
        s.commit()


# -- schema ------------------------------------------------------------------------------


def test_migrations_run_from_empty_to_head_twice(empty_db: Database) -> None:
    assert inspect(empty_db.engine).get_table_names() == []
    empty_db.migrate()
    empty_db.migrate()
    with empty_db.engine.connect() as conn:
        versions = conn.scalars(text("SELECT version_num FROM alembic_version")).all()
    assert versions == [head_revision()]


def test_migrated_schema_matches_the_models(db: Database) -> None:
    """Guards against a model changed without a migration (or the other way round)."""
    schema = inspect(db.engine)
    assert set(Base.metadata.tables) <= set(schema.get_table_names())
    for name, table in Base.metadata.tables.items():
        migrated = {c["name"]: c for c in schema.get_columns(name)}
        for column in table.columns:
            assert column.name in migrated, f"{name}.{column.name} is in the model only"
            assert migrated[column.name]["nullable"] == column.nullable, f"{name}.{column.name}"
        assert set(migrated) == {c.name for c in table.columns}, f"{name}: extra columns"
        migrated_pk = schema.get_pk_constraint(name)["constrained_columns"]
        assert migrated_pk == [c.name for c in table.primary_key.columns]
    # Alembic's own comparison also covers types, indexes and unique constraints.
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# -- rows ------------------------------------------------------------------------------


def test_vm_round_trips_with_aware_timestamps(db: Database) -> None:
    add_vms(db, "vm1")
    with db.session() as s:
        vm = s.get(Vm, "vm1")
        assert vm is not None
        assert vm.state == VmState.requested == "requested"
        assert vm.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - vm.created_at) < timedelta(minutes=5)
        vm.state = VmState.ready
        vm.ip = "192.0.2.2"
        vm.boot_seconds = 11.5
        s.commit()
    with db.session() as s:
        vm = s.get(Vm, "vm1")
        assert vm is not None
        assert (vm.state, vm.ip, vm.boot_seconds, vm.tap) == ("ready", "192.0.2.2", 11.5, "hthvm1")
        assert type(vm.state) is str
        assert vm.updated_at >= vm.created_at
        assert vm.updated_at.tzinfo is not None


def test_timestamps_keep_the_instant_given_in_any_zone(db: Database) -> None:
    moment = datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    with db.session() as s:
        s.add(Vm(id="vm1", image="cli", vmm="qemu", tap="hth1", agent_token="t", created_at=moment))
        s.commit()
    with db.session() as s:
        created = s.scalar(select(Vm.created_at))
    assert created == moment
    assert created.tzinfo == UTC


def test_constraint_errors_do_not_reveal_row_values(db: Database) -> None:
    """An agent token must not leak through an exception message (e.g. into a log)."""
    add_vms(db, "vm1")
    with db.session() as s, pytest.raises(IntegrityError) as raised:
        s.add(Vm(id="vm2", image="cli", vmm="qemu", tap="hthvm1", agent_token="s3cret-token"))
        s.commit()
    assert "s3cret-token" not in str(raised.value)


def test_foreign_keys_are_enforced(db: Database) -> None:
    with db.session() as s, pytest.raises(IntegrityError):
        s.add(IpLease(ip="192.0.2.2", vm_id="no-such-vm"))
        s.commit()


# -- IP pool -----------------------------------------------------------------------------


def test_leases_lowest_free_first_and_never_the_gateway(db: Database) -> None:
    vms = [f"vm{n}" for n in range(len(SMALL_FREE))]
    add_vms(db, *vms)
    pool = IpPool(db, SMALL)
    assert [pool.lease(vm) for vm in vms] == SMALL_FREE
    assert pool.leases() == dict(zip(vms, SMALL_FREE, strict=True))


def test_leasing_again_for_a_vm_returns_its_address(db: Database) -> None:
    add_vms(db, "vm1", "vm2")
    pool = IpPool(db, SMALL)
    first = pool.lease("vm1")
    pool.lease("vm2")
    assert pool.lease("vm1") == first
    assert len(pool.leases()) == 2


def test_release_frees_the_address_for_the_next_lease(db: Database) -> None:
    add_vms(db, "vm1", "vm2", "vm3", "vm4")
    pool = IpPool(db, SMALL)
    for vm in ("vm1", "vm2", "vm3"):
        pool.lease(vm)
    pool.release("vm2")
    assert "vm2" not in pool.leases()
    assert pool.lease("vm4") == "192.0.2.3"
    pool.release("vm2")  # releasing twice is harmless


def test_exhausted_pool_says_which_subnet_is_full(db: Database) -> None:
    vms = [f"vm{n}" for n in range(len(SMALL_FREE) + 1)]
    add_vms(db, *vms)
    pool = IpPool(db, SMALL)
    for vm in vms[:-1]:
        pool.lease(vm)
    with pytest.raises(PoolExhausted, match=r"no free address left in 192\.0\.2\.0/29"):
        pool.lease(vms[-1])
    assert vms[-1] not in pool.leases()


def test_lease_for_an_unknown_vm_is_refused(db: Database) -> None:
    pool = IpPool(db, SMALL)
    with pytest.raises(UnknownVm, match="no-such-vm"):
        pool.lease("no-such-vm")
    assert pool.leases() == {}


@pytest.mark.timeout(120)
def test_concurrent_leases_get_distinct_addresses(db: Database) -> None:
    """Threads racing for the lowest free address: the losers retry and take the next ones."""
    gateway = ipaddress.IPv4Interface("192.0.2.1/28")
    vms = [f"vm{n}" for n in range(THREADS)]
    add_vms(db, *vms)
    pool = IpPool(db, gateway)
    start = threading.Barrier(THREADS)

    def lease(vm_id: str) -> str:
        start.wait(timeout=30)
        return pool.lease(vm_id)

    with ThreadPoolExecutor(THREADS) as workers:
        got = list(workers.map(lease, vms))
    assert sorted(got, key=ipaddress.IPv4Address) == pool.candidates()[:THREADS]
    assert pool.leases() == dict(zip(vms, got, strict=True))
