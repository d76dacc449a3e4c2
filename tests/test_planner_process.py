"""The planner end to end over real parts (tansu broker, PostgreSQL, libvirt test driver,
every service and every simulated host its own OS process), judged by what the
executors themselves report (ClusterView), not by the planner's own records:

1. two hosts fail together (the second while the first one's rebuilds are on their way
   to it) and the survivors have room for exactly all their evacuable VMs: every one
   runs exactly once elsewhere, no survivor is over its capacity (no room was given
   twice), and both evacuations complete;
2. a rebuild fails on one target (its executor does not see the shared storage where
   the disks are) and succeeds on a second: attempt 2, the failing host excluded, the
   failure and its reason in the audit trail;
3. the planner is SIGKILLed after it stored a plan and before it saw any result, and is
   restarted: the evacuation completes with each VM on exactly one host, each item done
   once and one EvacuationCompleted on the bus.

The tests run in order on one stack: each leaves the hosts the next one needs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from services.common.embedded import EmbeddedBroker
from services.common.schemas import PowerState, Topic
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import SimVM
from services.evacctl.stack import Stack, admin_sql

pytestmark = pytest.mark.slow

# Names and indexes (which make the VMs' uuids and MACs) of this module's own: the broker
# is shared with the other process tests of the session. Hosts without VMs need no index.
VM_MIB = 1024  # every simulated VM (SimVM.memory_mib)
VICTIMS = ("pp1", "pp2")  # test 1: 4 VMs each, 3 of them evacuable (one is off)
SURVIVORS = ("pp3", "pp4")  # test 1: 2 VMs each (1 evacuable, 1 local), room for 3 more each
SURVIVOR_MIB = 2 * VM_MIB + 3 * VM_MIB
BAD, GOOD, VICTIM2 = "ppbad", "ppgood", "pp5"  # test 2
GOOD_MIB = 8 * VM_MIB  # room for test 2 (2 VMs) and test 3 (pp4's 4 evacuable VMs)
PIPELINE = ("detector", "planner", "templater")


async def _wait_ready(stack: Stack, view: ClusterView, hosts: list[str], timeout: float = 60) -> None:
    vms = [uuid.UUID(vm.uuid) for h in hosts for vm in stack.vms[h]]
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            up = await conn.fetchval("SELECT count(*) FROM hosts WHERE state='up' AND vcpus > 0 AND name = ANY($1)",
                                     hosts)
            known = await conn.fetchval("SELECT count(*) FROM instances WHERE present AND uuid = ANY($1::uuid[])",
                                        vms)
            if up == len(hosts) and known == len(vms) and all(h in view.reports for h in hosts):
                return
            dead = [n for n in stack.dead_services() if n in PIPELINE or n.removeprefix("executor-") in hosts]
            assert not dead, f"{dead} exited (see {stack.workdir}/logs)"
            assert time.monotonic() < deadline, f"not ready: {up}/{len(hosts)} hosts up, {known}/{len(vms)} VMs known"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A database of this module's own on the session's server: hosts other modules leave
    # behind would be declared down (and evacuated) by this stack's detector.
    s = Stack(Path(tmp_path_factory.mktemp("ppstack")), kafka_bootstrap=broker.bootstrap, database_url=database_url,
              fresh_database=True)
    s.start_infra()
    # Test 2's hosts start now (in parallel with the rest) but disabled, so that test 1
    # cannot use their room; an inventory report does not change the flag.
    asyncio.run(admin_sql(s.database_url, "INSERT INTO hosts (name, enabled) VALUES"
                                          f" ('{BAD}', false), ('{GOOD}', false), ('{VICTIM2}', false)"))
    for name in PIPELINE:  # the status API is not needed here: one process less to start
        s.spawn(name, f"services.{name}")
    for i, h in enumerate(VICTIMS, 11):
        s.add_host(i, h, vm_count=4, shutoff=1, local=1)
    for i, h in enumerate(SURVIVORS, 13):
        s.add_host(i, h, vm_count=2, shutoff=0, local=1, memory_mib=SURVIVOR_MIB)
    # BAD's executor looks for the shared storage where it is not mounted (an empty
    # directory). It has by far the most free RAM, so the planner tries it first.
    unmounted = s.workdir / "unmounted-shared"
    unmounted.mkdir()
    s.add_host(0, BAD, vm_count=0, memory_mib=64 * VM_MIB, env={"EVACUATE_SHARED_STORAGE": str(unmounted)})
    s.add_host(0, GOOD, vm_count=0, memory_mib=GOOD_MIB)
    s.add_host(15, VICTIM2, vm_count=3, shutoff=1, local=1)
    yield s
    for name in list(s.procs):  # no graceful stop to wait for: nothing here is judged by it
        s.kill(name)
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    await _wait_ready(stack, v, [*VICTIMS, *SURVIVORS, BAD, GOOD, VICTIM2])
    yield v
    await v.stop()


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


def _expected(vm: SimVM) -> PowerState:
    return PowerState.RUNNING if vm.running else PowerState.SHUTOFF


async def _closed_evacuation(db: asyncpg.Connection, source: str, since: float,
                             timeout: float = 45) -> asyncpg.Record:
    deadline = time.monotonic() + timeout
    while True:
        evac = await db.fetchrow("SELECT * FROM evacuations WHERE source=$1 AND created_at >= to_timestamp($2)"
                                 " ORDER BY created_at DESC LIMIT 1", source, since)
        if evac is not None and evac["status"] != "running":
            return evac
        assert time.monotonic() < deadline, f"evacuation of {source} not closed: {evac and dict(evac)}"
        await asyncio.sleep(0.1)


async def _seen_once_elsewhere(view: ClusterView, vms: list[SimVM], dead: set[str], timeout: float = 30) -> None:
    """Wait until every VM's newest reports put it on exactly one live host in its old power
    state; then assert it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all([d.power_state for _, d in view.where(vm.uuid, dead)] == [_expected(vm)] for vm in vms):
            return
        await asyncio.sleep(0.1)
    for vm in vms:
        seen = view.where(vm.uuid, dead)
        assert len(seen) == 1, f"{vm.name} is defined on {[h for h, _ in seen]} (expected exactly one host)"
        assert seen[0][1].power_state == _expected(vm), f"{vm.name}: {seen[0][1].power_state}"


def _memory_in_use(view: ClusterView, host: str) -> int:
    return sum(d.memory_mib for d in view.reports[host].domains)


async def test_two_hosts_fail_together_with_just_enough_capacity(
        stack: Stack, view: ClusterView, db: asyncpg.Connection) -> None:
    evacuable = [vm for h in VICTIMS for vm in stack.vms[h] if vm.shared]
    free = {h: view.reports[h].memory_mib - _memory_in_use(view, h) for h in SURVIVORS}
    assert sum(free.values()) == len(evacuable) * VM_MIB, free  # exactly enough, not one VM more

    # pp2 dies. Its evacuation is planned while pp1 is still up, and pp1 has by far the most
    # free RAM: pp2's VMs are sent there. Then pp1 dies too, before any order reaches it (the
    # templater is held meanwhile, which makes the order of events certain).
    first, second = VICTIMS[1], VICTIMS[0]
    templater = stack.procs["templater"]
    os.killpg(templater.pid, signal.SIGSTOP)
    try:
        killed = stack.kill(f"executor-{first}")
        deadline = time.monotonic() + 30
        while not (targets := await db.fetch(
                "SELECT it.target FROM evacuation_items it JOIN evacuations e ON e.id = it.evacuation_id"
                " WHERE e.source=$1 AND it.status='pending'", first)):
            assert time.monotonic() < deadline, f"no evacuation of {first}"
            await asyncio.sleep(0.01)
        assert {r["target"] for r in targets} == {second}, [r["target"] for r in targets]
        stack.kill(f"executor-{second}")
    finally:
        os.killpg(templater.pid, signal.SIGCONT)

    evacs = [await _closed_evacuation(db, h, killed) for h in VICTIMS]
    await _seen_once_elsewhere(view, evacuable, set(VICTIMS))

    retried = 0
    for evac in evacs:
        assert evac["status"] == "completed", dict(evac)
        items = await db.fetch("SELECT * FROM evacuation_items WHERE evacuation_id=$1", evac["id"])
        assert sorted(i["status"] for i in items) == ["done"] * 3 + ["not_evacuable"], [dict(i) for i in items]
        # The rebuilds sent to a host that then died are placed again as soon as it is
        # declared down, not left to the result timeout.
        other = next(h for h in VICTIMS if h != evac["source"])
        for i in items:
            if i["status"] == "done" and i["attempt"] != 1:
                assert (i["attempt"], list(i["excluded"])) == (2, [other]), dict(i)
                assert f"after {other} failed: target {other} went down" in i["reason"], i["reason"]
        retried += sum(i["attempt"] == 2 for i in items)
    # No host over its capacity, by the executors' own reports: the second plan saw the
    # first one's rebuilds in flight, so no room was given twice.
    for h in SURVIVORS:
        assert _memory_in_use(view, h) <= view.reports[h].memory_mib, (h, _memory_in_use(view, h))
    targets = await db.fetch(
        "SELECT target, count(*) n FROM evacuation_items WHERE evacuation_id = ANY($1::uuid[]) AND status='done'"
        " GROUP BY target ORDER BY target", [e["id"] for e in evacs])
    assert {r["target"]: r["n"] * VM_MIB for r in targets} == free
    # Every evacuable VM is where the system of record says, and nowhere else.
    for vm in evacuable:
        (host, _), = view.where(vm.uuid, set(VICTIMS))
        assert host in SURVIVORS
        assert await db.fetchval("SELECT host FROM instances WHERE uuid=$1", uuid.UUID(vm.uuid)) == host
    local = [vm for h in VICTIMS for vm in stack.vms[h] if not vm.shared]
    assert all(not view.where(vm.uuid, set(VICTIMS)) for vm in local)
    # pp2's rebuilds sent to pp1 were placed again as soon as pp1 was declared down.
    assert retried == sum(vm.shared for vm in stack.vms[first]), retried


async def test_rebuild_fails_on_one_target_and_succeeds_on_another(
        stack: Stack, view: ClusterView, db: asyncpg.Connection) -> None:
    unmounted = stack.workdir / "unmounted-shared"
    await db.execute("UPDATE hosts SET enabled=true WHERE name = ANY($1)", [BAD, GOOD])
    evacuable = [vm for vm in stack.vms[VICTIM2] if vm.shared]
    assert {vm.running for vm in evacuable} == {True, False}

    killed = stack.kill(f"executor-{VICTIM2}")
    evac = await _closed_evacuation(db, VICTIM2, killed)
    await _seen_once_elsewhere(view, evacuable, {VICTIM2})
    assert evac["status"] == "completed", dict(evac)

    for vm in evacuable:
        (host, _), = view.where(vm.uuid, {VICTIM2})
        assert host == GOOD, f"{vm.name} on {host}"
        item = await db.fetchrow("SELECT * FROM evacuation_items WHERE evacuation_id=$1 AND instance_uuid=$2",
                                 evac["id"], uuid.UUID(vm.uuid))
        assert (item["status"], item["attempt"], item["target"], list(item["excluded"])) == ("done", 2, GOOD, [BAD])
        assert BAD in item["reason"] and "not on shared storage" in item["reason"], item["reason"]
    failures = await db.fetch("SELECT * FROM audit WHERE evacuation_id=$1 AND kind='rebuild-failed' ORDER BY id",
                              evac["id"])
    assert sorted(f["detail"].split(":")[0] for f in failures) == sorted(f"{vm.name} on {BAD}" for vm in evacuable)
    for f in failures:
        assert f["host"] == BAD and f"is not on shared storage {unmounted}" in f["detail"], f["detail"]
        data = json.loads(f["data"]) if isinstance(f["data"], str) else f["data"]
        assert data["attempt"] == 1 and data["steps"][-1]["name"] == "validate", data
        assert not data["steps"][-1]["ok"], data
    assert not [d for d in view.reports[BAD].domains], "the failed attempt left a domain behind"


async def _completions(bootstrap: str, evacuation_id: str, quiet: float) -> list[dict[str, object]]:
    """Every EvacuationCompleted of this evacuation on the bus, from the beginning of the topic."""
    c = AIOKafkaConsumer(str(Topic.EVACUATIONS), bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4()}",
                         auto_offset_reset="earliest", fetch_max_wait_ms=10, enable_auto_commit=False)
    await c.start()
    found: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=200)).values():
                for r in records:
                    env = json.loads(r.value)
                    if env.get("type") == "EvacuationCompleted" and env["data"]["evacuation_id"] == evacuation_id:
                        found.append(env)
    finally:
        await c.stop()
    return found


async def test_planner_killed_between_plan_and_results_resumes_without_duplicates(
        stack: Stack, view: ClusterView, db: asyncpg.Connection) -> None:
    victim = SURVIVORS[1]  # its own VM and what test 1 moved there
    await db.execute("UPDATE hosts SET enabled=false WHERE name=$1", BAD)  # only GOOD has room
    dead = {*VICTIMS, VICTIM2}  # their last reports still list what they had
    evacuable = [vm for h in stack.vms for vm in stack.vms[h]
                 if vm.shared and [x for x, _ in view.where(vm.uuid, dead)] == [victim]]
    assert len(evacuable) >= 2

    # Hold the plan between the planner and the executors: the templater is stopped, so
    # no order (and so no result) can exist when the planner dies.
    templater = stack.procs["templater"]
    os.killpg(templater.pid, signal.SIGSTOP)
    try:
        killed = stack.kill(f"executor-{victim}")
        deadline = time.monotonic() + 30
        # Stored, and its plan relayed to the bus (the outbox is empty): then the planner dies.
        while await db.fetchval("SELECT count(*) FROM evacuations WHERE source=$1 AND created_at >= to_timestamp($2)"
                                " AND NOT EXISTS (SELECT 1 FROM outbox)", victim, killed) == 0:
            assert time.monotonic() < deadline, "no evacuation stored"
            await asyncio.sleep(0.005)
        stack.kill("planner")
    finally:
        os.killpg(templater.pid, signal.SIGCONT)
    evac = await db.fetchrow("SELECT * FROM evacuations WHERE source=$1 AND created_at >= to_timestamp($2)",
                             victim, killed)
    pending = "SELECT count(*) FROM evacuation_items WHERE evacuation_id=$1 AND status='pending'"
    assert evac["status"] == "running" and await db.fetchval(pending, evac["id"]) == len(evacuable)

    # With the planner dead the executors rebuild what the plan asked for, and their results
    # wait on the bus; nothing changes the evacuation's rows meanwhile.
    await _seen_once_elsewhere(view, evacuable, dead | {victim})
    assert await db.fetchval(pending, evac["id"]) == len(evacuable)
    # The restarted planner re-publishes the still pending orders (the executor finds each
    # VM already there) and then reads the results: each item is done once.
    stack.restart("planner")

    evac = await _closed_evacuation(db, victim, killed)
    assert evac["status"] == "completed", dict(evac)
    await _seen_once_elsewhere(view, evacuable, dead | {victim})
    for vm in evacuable:
        (host, _), = view.where(vm.uuid, dead | {victim})
        assert host == GOOD
    items = await db.fetch("SELECT * FROM evacuation_items WHERE evacuation_id=$1 AND status <> 'not_evacuable'",
                           evac["id"])
    assert sorted(str(i["instance_uuid"]) for i in items) == sorted(vm.uuid for vm in evacuable)
    assert [(i["status"], i["attempt"], i["target"]) for i in items] == [("done", 1, GOOD)] * len(items)
    done = await db.fetch("SELECT detail FROM audit WHERE evacuation_id=$1 AND kind='rebuild-done'", evac["id"])
    assert len(done) == len(evacuable), [d["detail"] for d in done]
    completions = await _completions(stack.kafka_bootstrap, str(evac["id"]), quiet=2.0)
    assert len(completions) == 1, completions
    assert completions[0]["data"]["status"] == "completed"
    assert _memory_in_use(view, GOOD) <= view.reports[GOOD].memory_mib


async def test_returning_host_cleans_up_what_was_placed_again_elsewhere(
        stack: Stack, view: ClusterView, db: asyncpg.Connection) -> None:
    """pp1 of test 1 comes back (as after a power cycle: its domains defined, none running).
    Its cleanup covers its own evacuated VMs and the ones it was a target for before it
    died (placed again elsewhere); it starts none of them, and each still runs once."""
    returning, other = VICTIMS
    own = [vm for vm in stack.vms[returning] if vm.shared]
    retried = [vm for vm in stack.vms[other] if vm.shared]
    local = next(vm for vm in stack.vms[returning] if not vm.shared)
    view.reports.pop(returning, None)
    stack.revive_host(returning)
    deadline = time.monotonic() + 45
    while True:
        state = await db.fetchval("SELECT state FROM hosts WHERE name=$1", returning)
        report = view.reports.get(returning)
        if state == "up" and report is not None and [d.uuid for d in report.domains] == [local.uuid]:
            break
        assert report is None or not [d for d in report.domains if d.power_state == PowerState.RUNNING
                                      and d.uuid != local.uuid], f"a stale copy was started on {returning}"
        assert time.monotonic() < deadline, f"{returning}: {state}, {report and [d.name for d in report.domains]}"
        await asyncio.sleep(0.1)
    detail = await db.fetchval("SELECT detail FROM audit WHERE kind='cleanup-ordered' AND host=$1", returning)
    assert detail == f"{returning} returned: destroy {len(own) + len(retried)} stale copies", detail
    for vm in own + retried:
        seen = view.where(vm.uuid, {*VICTIMS, VICTIM2, SURVIVORS[1]})
        assert len(seen) == 1 and seen[0][1].power_state == _expected(vm), f"{vm.name}: {seen}"
