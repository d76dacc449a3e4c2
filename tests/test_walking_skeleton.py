"""End to end over real parts: tansu broker, PostgreSQL, libvirt test driver; every
service and every simulated host its own OS process. One host is killed; its VMs must
run again elsewhere with the same identity and power state."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.domain_xml import parse_domain
from services.common.embedded import EmbeddedBroker
from services.common.schemas import EvacuationRequested, PowerState, Topic, encode, wrap
from services.evacctl.demo import wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("stack")), kafka_bootstrap=broker.bootstrap, database_url=database_url)
    s.start_infra()
    s.start_services()
    for i, h in enumerate(("h1", "h2", "h3"), 1):
        s.add_host(i, h, vm_count=10)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    await wait_ready(stack, v, hosts=3, vms=30)
    yield v
    await v.stop()


async def test_killed_host_vms_run_elsewhere_with_same_identity(stack: Stack, view: ClusterView) -> None:
    before = {d.uuid: d for d in view.reports["h1"].domains}
    killed = stack.kill("executor-h1")
    shared = [vm for vm in stack.vms["h1"] if vm.shared]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(view.where(vm.uuid, {"h1"}) for vm in shared):
            break
        await asyncio.sleep(0.1)
    for vm in shared:
        seen = view.where(vm.uuid, {"h1"})
        assert len(seen) == 1, f"{vm.name} is defined on {[h for h, _ in seen]} (expected exactly one host)"
        host, dom = seen[0]
        assert host in ("h2", "h3")
        old, new = before[vm.uuid], dom
        assert (new.uuid, new.name) == (old.uuid, old.name)
        assert [n.mac for n in new.nics] == [n.mac for n in old.nics] == [vm.mac]
        assert [d.path for d in new.disks] == [d.path for d in old.disks]
        assert new.power_state == (PowerState.RUNNING if vm.running else PowerState.SHUTOFF), vm.name
        assert parse_domain(new.xml, str(stack.shared_dir)).uuid == vm.uuid

    conn = await asyncpg.connect(stack.database_url)
    try:
        evac = None
        while time.monotonic() < deadline:
            evac = await conn.fetchrow("SELECT * FROM evacuations WHERE source='h1' AND trigger='NodeDown'")
            if evac is not None and evac["status"] != "running":
                break
            await asyncio.sleep(0.1)
        assert evac is not None and evac["status"] == "completed", evac
        assert evac["created_at"].timestamp() > killed
        local = next(vm for vm in stack.vms["h1"] if not vm.shared)
        item = await conn.fetchrow("SELECT * FROM evacuation_items WHERE instance_uuid=$1", uuid.UUID(local.uuid))
        assert item["status"] == "not_evacuable"
        assert "not on shared storage" in item["reason"] and local.name in item["reason"]
        assert not view.where(local.uuid, {"h1"}), "the VM on a host-local disk must not be rebuilt"
        host = await conn.fetchrow("SELECT * FROM hosts WHERE name='h1'")
        assert host["state"] == "down" and "fenced by process" in host["state_reason"]
    finally:
        await conn.close()


async def _dead_letters(bootstrap: str) -> AIOKafkaConsumer:
    c = AIOKafkaConsumer(str(Topic.DEAD_LETTER), bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4()}",
                         auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await c.start()
    return c


async def test_bad_messages_go_to_dead_letter_and_consumer_goes_on(stack: Stack, view: ClusterView) -> None:
    bad = {
        "not-json": b"\xff{{{ definitely not json",
        "unknown-type": json.dumps({"type": "Teleport", "version": 1, "id": str(uuid.uuid4()),
                                    "at": "2026-11-28T00:00:00Z", "source": "t", "data": {}}).encode(),
        "newer-version": json.dumps({"type": "EvacuationRequested", "version": 9, "id": str(uuid.uuid4()),
                                     "at": "2026-11-28T00:00:00Z", "source": "t", "data": {"host": "h2"}}).encode(),
        "bad-schema": json.dumps({"type": "EvacuationRequested", "version": 1, "id": str(uuid.uuid4()),
                                  "at": "2026-11-28T00:00:00Z", "source": "t",
                                  "data": {"host": ["not", "a", "string"]}}).encode(),
    }
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    letters = await _dead_letters(stack.kafka_bootstrap)
    try:
        for name, raw in bad.items():
            await producer.send_and_wait(str(Topic.PLANS), raw, key=f"poison-{name}".encode())
        good = wrap(EvacuationRequested(host="no-such-host", requested_by="test"), "test")
        await producer.send_and_wait(str(Topic.PLANS), encode(good), key=b"no-such-host")

        found: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(found) < len(bad):
            batch = await letters.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    data = json.loads(r.value)["data"]
                    key = data.get("original_key") or ""
                    if key.startswith("poison-") and data["consumer"] == "planner":
                        found[key.removeprefix("poison-")] = data
        assert set(found) == set(bad)
        assert "not JSON" in str(found["not-json"]["reason"])
        assert found["not-json"]["original"] == bad["not-json"].decode("utf-8", errors="backslashreplace")
        assert "unknown message type 'Teleport'" in str(found["unknown-type"]["reason"])
        assert "version 9 is not supported" in str(found["newer-version"]["reason"])
        assert "fails its schema" in str(found["bad-schema"]["reason"]) and "host" in str(found["bad-schema"]["reason"])
        for letter in found.values():
            assert letter["topic"] == str(Topic.PLANS)

        # The good message after the poison ones was handled: a refused evacuation is recorded.
        conn = await asyncpg.connect(stack.database_url)
        try:
            row = None
            while time.monotonic() < deadline and row is None:
                row = await conn.fetchrow("SELECT * FROM evacuations WHERE trigger_id=$1", uuid.UUID(good.id))
                await asyncio.sleep(0.1)
            assert row is not None and row["status"] == "refused"
            assert "unknown host 'no-such-host'" in row["reason"]
        finally:
            await conn.close()
    finally:
        await letters.stop()
        await producer.stop()


async def test_returning_host_destroys_its_stale_copies(stack: Stack, view: ClusterView) -> None:
    """h1 was evacuated by the first test. It comes back (as after a power cycle, its
    domains defined but not running): it gets a CleanupOrder, destroys and undefines the
    stale copies without touching their disks, starts none, and only then is up again."""
    evacuated = [vm for vm in stack.vms["h1"] if vm.shared]
    local = next(vm for vm in stack.vms["h1"] if not vm.shared)
    view.reports.pop("h1", None)  # forget what h1 said before it died
    stack.revive_host("h1")
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            state = await conn.fetchval("SELECT state FROM hosts WHERE name='h1'")
            report = view.reports.get("h1")
            if state == "up" and report is not None and not any(
                    d.uuid in {vm.uuid for vm in evacuated} for d in report.domains):
                break
            assert report is None or not [d for d in report.domains if d.power_state == PowerState.RUNNING
                                          and d.uuid != local.uuid], "a stale copy was started on h1"
            await asyncio.sleep(0.1)
        assert state == "up"
        report = view.reports["h1"]
        assert [d.uuid for d in report.domains] == [local.uuid]
        for vm in evacuated:
            assert (stack.shared_dir / f"{vm.name}.qcow2").exists(), "cleanup must not delete shared disks"
            seen = view.where(vm.uuid)
            assert len(seen) == 1 and seen[0][0] in ("h2", "h3"), f"{vm.name} on {[h for h, _ in seen]}"
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit WHERE host='h1' ORDER BY id")]
        assert "NodeUp" in kinds and "cleanup-ordered" in kinds
    finally:
        await conn.close()
