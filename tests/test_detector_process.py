"""Isolation over a real network cut (issue 4, DESIGN §1 and §4). Executors dp1 and dp2
each run in a network namespace of their own, joined to the machine by a veth pair; a
broker of this module's own listens on an address the namespaces reach through their
veth. Cutting an executor off the broker is taking its veth down: its storage heartbeat
(shared storage is a local directory, reachable whatever the network does) goes on.

(a) dp1 (isolation_timeout 60 s): cut → HostIsolated, state `isolated`, no evacuation
    while its storage heartbeat is renewed; back → up, its VMs untouched.
(b) dp2 (isolation response power-off after 3 s): cut → the executor destroys its HA
    domains and stops its storage heartbeat → NodeDown (self-fenced, fenced_by
    storage-lease) → its VMs evacuated, never running on two hosts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from services.common.embedded import EmbeddedBroker
from services.common.schemas import PowerState, Topic
from services.detector.storage import heartbeat_dir, read_heartbeat
from services.evacctl.chaos_netcut import destroyed_by_isolation
from services.evacctl.demo import wait_ready
from services.evacctl.netns import NetNs, ip, netns_unavailable, spawn_in_netns
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import plan_vms
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

BROKER_IP = "10.251.20.1"  # on the loopback device: reachable from here and, routed, from the namespaces
NETS = {"dp1": ("10.251.21.1", "10.251.21.2"), "dp2": ("10.251.22.1", "10.251.22.2")}
INDEX = {"dp1": 21, "dp2": 22, "dp3": 23}
VMS = 6


@dataclass
class Cluster:
    stack: Stack
    nets: dict[str, NetNs]


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = netns_unavailable()
    if why:
        pytest.skip(f"network namespaces not available: {why}")
    added_ip = ip("addr", "add", f"{BROKER_IP}/32", "dev", "lo", check=False).returncode == 0
    nets = {h: NetNs(h, *ips) for h, ips in NETS.items()}
    broker = EmbeddedBroker(host=BROKER_IP)
    stack: Stack | None = None
    try:
        for ns in nets.values():
            ns.create()
        broker.start()
        stack = Stack(Path(tmp_path_factory.mktemp("detector-process")), kafka_bootstrap=broker.bootstrap,
                      database_url=database_url, fresh_database=True)
        stack.start_infra()
        stack.start_services()
        common = {"EVACUATE_ISOLATION_RESPONSE": "none", "EVACUATE_ISOLATION_TIMEOUT": "60"}
        spawn_in_netns(stack, nets["dp1"], "dp1", plan_vms(INDEX["dp1"], "dp1", VMS, shutoff=1, local=1), **common)
        spawn_in_netns(stack, nets["dp2"], "dp2", plan_vms(INDEX["dp2"], "dp2", VMS, shutoff=1, local=1),
                        EVACUATE_ISOLATION_RESPONSE="power-off", EVACUATE_ISOLATION_TIMEOUT="3")
        stack.add_host(INDEX["dp3"], "dp3", vm_count=2, shutoff=0, local=0)
        yield Cluster(stack, nets)
    finally:
        if stack is not None:
            stack.stop()
        broker.stop()
        for ns in nets.values():
            ns.delete()
        if added_ip:
            ip("addr", "del", f"{BROKER_IP}/32", "dev", "lo", check=False)
    assert stack is not None
    assert not stack.tracebacks(), "a service logged a traceback"


class Events:
    """Every message on evacuate.host-events since the module started."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(str(Topic.HOST_EVENTS), bootstrap_servers=bootstrap,
                                         group_id=f"t-{uuid.uuid4()}", auto_offset_reset="earliest",
                                         fetch_max_wait_ms=10)
        self.seen: list[dict[str, object]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()

        async def run() -> None:
            async for r in self.consumer:
                self.seen.append(json.loads(r.value))

        self.task = asyncio.ensure_future(run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def of(self, kind: str, host: str) -> list[dict[str, object]]:
        return [e for e in self.seen if e["type"] == kind and e["data"]["host"] == host]  # type: ignore[index]


@pytest.fixture(scope="module")
async def view(cluster: Cluster) -> AsyncIterator[tuple[ClusterView, Events]]:
    v = ClusterView(cluster.stack.kafka_bootstrap)
    events = Events(cluster.stack.kafka_bootstrap)
    await v.start()
    await events.start()
    await wait_ready(cluster.stack, v, hosts=3, vms=2 * VMS + 2, timeout=90)
    await asyncio.sleep(2.0)  # storage heartbeats seen renewed at least once
    yield v, events
    await events.stop()
    await v.stop()


async def _wait(what: str, cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()  # type: ignore[operator]
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _storage_stamp(stack: Stack, host: str) -> tuple[float, int]:
    hb = read_heartbeat(heartbeat_dir(stack.shared_dir) / host)
    assert hb is not None, f"no storage heartbeat file for {host}"
    return hb[1], hb[2]


async def test_cut_executor_is_isolated_not_evacuated(cluster: Cluster, view: tuple[ClusterView, Events]) -> None:
    stack, ns = cluster.stack, cluster.nets["dp1"]
    cv, events = view
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await conn.fetchval("SELECT state FROM hosts WHERE name='dp1'") == "up"
        cut = ns.cut()
        try:
            await _wait("dp1 isolated", lambda: conn.fetchval(
                "SELECT state = 'isolated' FROM hosts WHERE name='dp1'"), 30)
            await _wait("HostIsolated dp1 on the bus", lambda: events.of("HostIsolated", "dp1"), 10)
            isolated = events.of("HostIsolated", "dp1")[-1]
            assert "storage heartbeat" in str(isolated["data"]["reason"])  # type: ignore[index]
            # Stay cut well past the storage lease expiry: still isolated, never evacuated,
            # because the storage heartbeat keeps being renewed.
            before = _storage_stamp(stack, "dp1")
            await asyncio.sleep(6.0)
            after = _storage_stamp(stack, "dp1")
            assert after[1] > before[1] and after[0] > cut, "dp1's storage heartbeat must go on while cut"
            row = await conn.fetchrow("SELECT state, state_reason FROM hosts WHERE name='dp1'")
            assert row["state"] == "isolated", row
            assert await conn.fetchval("SELECT count(*) FROM evacuations WHERE source='dp1'") == 0
            assert not events.of("NodeDown", "dp1")
            assert stack.procs["executor-dp1"].poll() is None, "an isolated host must not be fenced"
        finally:
            ns.restore()
        back = time.time()
        await _wait("dp1 up again", lambda: conn.fetchval("SELECT state = 'up' FROM hosts WHERE name='dp1'"), 60)
        reason = await conn.fetchval("SELECT state_reason FROM hosts WHERE name='dp1'")
        assert "nothing was evacuated" in reason
        await _wait("a fresh dp1 report", lambda: cv.report_at.get("dp1", 0) > back, 30)
        running = {d.uuid for d in cv.reports["dp1"].domains if d.power_state == PowerState.RUNNING}
        assert running == {vm.uuid for vm in stack.vms["dp1"] if vm.running}, "response none: VMs untouched"
    finally:
        await conn.close()


def _destroyed(stack: Stack, host: str) -> dict[str, float]:
    """uuid → when the executor's isolation response destroyed it (from its log)."""
    return destroyed_by_isolation(stack.workdir / "logs" / f"executor-{host}.log")


async def test_power_off_isolation_self_fences_and_vms_run_once(
        cluster: Cluster, view: tuple[ClusterView, Events]) -> None:
    stack, ns = cluster.stack, cluster.nets["dp2"]
    cv, events = view
    shared = [vm for vm in stack.vms["dp2"] if vm.shared]
    all_vms = [vm for vms in stack.vms.values() for vm in vms]
    twice: list[str] = []
    first_elsewhere: dict[str, float] = {}
    cut_off: set[str] = set()

    async def sample() -> None:
        # The newest report of each host reachable on the bus; a cut host's last report is
        # stale, so its truth is taken from its own log below.
        while True:
            for vm in all_vms:
                hosts = [h for h, d in cv.where(vm.uuid, cut_off) if d.power_state == PowerState.RUNNING]
                if len(hosts) > 1:
                    twice.append(f"{vm.name} running on {hosts} at {time.time():.2f}")
                if vm.host == "dp2" and any(h != "dp2" for h in hosts):
                    first_elsewhere.setdefault(vm.uuid, time.time())
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    conn = await asyncpg.connect(stack.database_url)
    try:
        cut_off.add("dp2")
        cut = ns.cut()
        try:
            await _wait("dp2 down", lambda: conn.fetchval("SELECT state = 'down' FROM hosts WHERE name='dp2'"), 40)
            await _wait("NodeDown dp2 on the bus", lambda: events.of("NodeDown", "dp2"), 10)
            down = events.of("NodeDown", "dp2")
            assert len(down) == 1, down
            data = down[0]["data"]
            assert data["fenced_by"] == "storage-lease", data  # type: ignore[index]
            assert "self-fenced" in str(data["reason"])  # type: ignore[index]
            assert events.of("HostIsolated", "dp2"), "dp2 is isolated first, while its storage heartbeat lives"
            assert stack.procs["executor-dp2"].poll() is None, "self-fenced: no fence was needed"
            down_at = (await conn.fetchval("SELECT state_since FROM hosts WHERE name='dp2'")).timestamp()

            # The executor destroyed its HA domains before its storage heartbeat stopped,
            # and that was before the NodeDown that let anything be rebuilt elsewhere.
            destroyed = _destroyed(stack, "dp2")
            assert set(destroyed) == {vm.uuid for vm in shared if vm.running}, destroyed
            log = (stack.workdir / "logs" / "executor-dp2.log").read_text()
            assert "ISOLATED" in log and "power-off" in log
            last_storage = _storage_stamp(stack, "dp2")[0]
            assert cut < max(destroyed.values()) < down_at
            assert last_storage < down_at - 2.0, "NodeDown only once the storage heartbeat had expired"

            # Evacuated: each shared VM defined on exactly one other host in its power state
            # (a rebuild defines before it starts: a report may come in between).
            def evacuated() -> bool:
                return all(len(seen := cv.where(vm.uuid, {"dp2"})) == 1 and seen[0][1].power_state == (
                    PowerState.RUNNING if vm.running else PowerState.SHUTOFF) for vm in shared)

            await _wait("dp2's VMs on other hosts in their power state", evacuated, 60)
            for vm in shared:
                (host, dom), = cv.where(vm.uuid, {"dp2"})
                assert dom.power_state == (PowerState.RUNNING if vm.running else PowerState.SHUTOFF), vm.name
            for u, t in first_elsewhere.items():
                assert destroyed[u] < t, f"{u} seen running elsewhere before dp2 destroyed it"
            evac = await conn.fetchrow("SELECT * FROM evacuations WHERE source='dp2' AND trigger='NodeDown'")
            assert evac is not None
        finally:
            ns.restore()
        back = time.time()
        # dp2 returns: it restarted nothing, gets its CleanupOrder, ends with no stale copy.
        # A report sent after the network came back (one buffered during the cut arrives late).
        await _wait("a fresh dp2 report", lambda: cv.report_at.get("dp2", 0) > back, 30)
        assert not [d for d in cv.reports["dp2"].domains if d.power_state == PowerState.RUNNING
                    and d.uuid in {vm.uuid for vm in shared}], "dp2 restarted a VM its isolation response stopped"
        cut_off.discard("dp2")
        await _wait("dp2 up after cleanup", lambda: conn.fetchval(
            "SELECT state = 'up' FROM hosts WHERE name='dp2'"), 60)
        await asyncio.sleep(1.0)
        left = {d.uuid for d in cv.reports["dp2"].domains}
        assert left == {vm.uuid for vm in stack.vms["dp2"] if not vm.shared}, left
        assert "bus reachable again" in (stack.workdir / "logs" / "executor-dp2.log").read_text()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await conn.close()
    assert not twice, twice[:5]
