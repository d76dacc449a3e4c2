"""One randomized fault scenario on the real stack, judged by the invariant checker.

A scenario kills one or two simulated hosts and, by a seeded schedule, adds faults:
SIGKILL of a control-plane service mid-evacuation (restarted after a pause), SIGKILL of a
target executor once a rebuild order for it is on the bus (its host fails mid-rebuild), duplicate
and reordered deliveries of every message seen on the bus, poison messages on every
topic, a host that returns after its VMs were evacuated, a host cut off the network while its
storage heartbeat goes on (services/evacctl/chaos_netcut.py). The same seed replays the same
schedule (the timing of the system under test still varies)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.common.db import DB_TRANSIENT
from services.common.schemas import Topic
from services.evacctl.chaos_netcut import NetCut
from services.evacctl.demo import wait_ready
from services.evacctl.invariants import InvariantChecker
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

SCENARIOS = ("host-kill", "two-hosts", "service-crash", "duplicates", "poison", "host-return", "broker-restart",
             "postgres-restart", "target-crash", "network-cut")
# Every topic a service consumes: heartbeats (and the inventory reports and cleanup results on
# their topic) too — a duplicate heartbeat of a dead host must not bring it back.
REPLAYED = (Topic.HEARTBEATS, Topic.HOST_EVENTS, Topic.PLANS, Topic.ORDERS, Topic.RESULTS)


@dataclass
class RunResult:
    seed: int
    scenario: str
    faults: list[str] = field(default_factory=list)
    vms: int = 0
    evacuated: int = 0
    double_runs: int = 0
    lost: int = 0
    recover_s: float | None = None
    violations: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


class Recorder:
    """Keeps every message seen on the replayed topics, to deliver them again."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = self._consumer()
        self.seen: list[tuple[str, bytes | None, bytes]] = []
        self.task: asyncio.Task[None] | None = None

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(*map(str, REPLAYED), bootstrap_servers=self.bootstrap,
                                group_id=f"chaos-{uuid.uuid4()}", auto_offset_reset="earliest", fetch_max_wait_ms=10)

    async def reconnect(self) -> None:
        """After a broker restart: read the new broker's topics from their start."""
        await self.stop()
        self.consumer = self._consumer()
        await self.start()

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for r in self.consumer:
            self.seen.append((r.topic, r.key, r.value))

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        with contextlib.suppress(KafkaError, asyncio.CancelledError):  # its broker was restarted under it
            await self.consumer.stop()


async def _replay(producer: AIOKafkaProducer, rec: Recorder, rng: random.Random) -> int:
    batch = list(rec.seen)
    rng.shuffle(batch)  # reordered across keys, and every one a duplicate
    for topic, key, value in batch:
        await producer.send(topic, value, key=key)
    await producer.flush()
    return len(batch)


async def _poison(producer: AIOKafkaProducer, rng: random.Random) -> None:
    bad = [b"\x00\xff garbage", b"{}", b'{"type": "NodeDown", "version": 7, "id": "x"}',
           b'{"type":"RebuildResult","version":1,"id":"' + str(uuid.uuid4()).encode()
           + b'","at":"2026-01-01T00:00:00Z","source":"chaos","data":{"ok":"maybe"}}']
    for topic in Topic:
        if topic is Topic.DEAD_LETTER:
            continue
        await producer.send(str(topic), rng.choice(bad), key=b"poison")
    await producer.flush()


async def run_one(seed: int, scenario: str | None = None, hosts: int = 4, vms: int = 6,
                  timeout: float = 90.0, isolation_response: str | None = None) -> RunResult:
    """``isolation_response`` forces the network-cut victim's (else drawn by the seed)."""
    rng = random.Random(seed)
    scenario = scenario or rng.choice(SCENARIOS)
    res = RunResult(seed=seed, scenario=scenario)
    net = NetCut.draw(rng, isolation_response) if scenario == "network-cut" else None
    if isinstance(net, str):  # no network namespaces here: nothing was run
        res.faults.append(f"skipped: {net}")
        return res
    workdir = Path(tempfile.mkdtemp(prefix="evacuate-chaos-"))
    # A PostgreSQL restart needs a server of the run's own (embedded); others use the configured one.
    stack = Stack(workdir, kafka_bootstrap="", fresh_database=True,
                  **({"database_url": "", "postgres_dir": workdir / "pg"} if scenario == "postgres-restart" else {}))
    try:
        if net:  # its broker on an address of lo the cut host's namespace reaches
            stack.broker_host = net.claim()
        await asyncio.to_thread(stack.start_infra)
        stack.start_services()
        names = [f"c{i}" for i in range(1, hosts + 1)]
        cut_host = rng.choice(names) if net else None
        for i, h in enumerate(names, 1):
            if net and h == cut_host:
                net.spawn(stack, 30 + i, h, vm_count=vms, memory_mib=vms * hosts * 1024)
            else:
                stack.add_host(30 + i, h, vm_count=vms, shutoff=1, local=1, memory_mib=vms * hosts * 1024)
        all_vms = {vm.uuid: vm for h in names for vm in stack.vms[h]}
        view = ClusterView(stack.kafka_bootstrap)
        await view.start()
        rec = Recorder(stack.kafka_bootstrap)
        await rec.start()
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        # A pool, not one connection: a restarted PostgreSQL cuts connections, the pool replaces them.
        conn = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
        checker = InvariantChecker(all_vms)
        try:
            await wait_ready(stack, view, hosts, hosts * vms, timeout=60)
            victims = net.victims() if net else rng.sample(names, 2 if scenario == "two-hosts" else 1)
            res.vms = sum(1 for v in all_vms.values() if v.host in victims and v.shared)
            killed = time.time()
            if net:  # cut off the network instead of killed
                killed = net.cut(stack, view, checker, res)
                faults = asyncio.ensure_future(net.run(stack, view, conn, rec, checker, res))
            else:
                for v in victims:
                    stack.kill(f"executor-{v}")
                    checker.dead.add(v)
                res.faults.append(f"kill {'+'.join(victims)}")
                faults = asyncio.ensure_future(_inject(scenario, rng, stack, rec, producer, res, view,
                                                       victims, checker))
            done_at = None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                checker.sample(view)
                placed = all(any(h != vm.host and h not in checker.dead for h, _ in view.where(vm.uuid))
                             for vm in all_vms.values() if vm.host in victims and vm.shared)
                try:
                    open_ = await conn.fetchval("SELECT count(*) FROM evacuations WHERE status='running'")
                    closed = await conn.fetchval("SELECT count(*) FROM evacuations WHERE status<>'running'"
                                                 " AND trigger='NodeDown'")
                except DB_TRANSIENT:  # the injected PostgreSQL restart
                    await asyncio.sleep(0.1)
                    continue
                if not placed:  # a target that failed mid-rebuild takes its placements with it
                    done_at = None
                elif done_at is None:
                    done_at = time.time()
                if done_at is not None and not open_ and closed >= len(victims) and faults.done():
                    break
                await asyncio.sleep(0.1)
            await faults
            if scenario == "host-return":
                await _return(stack, view, conn, checker, victims[0], res)
            if net:
                await net.finish(stack, view, conn, rec, checker)
            for _ in range(10):  # a quiet second: late duplicates must change nothing
                checker.sample(view)
                await asyncio.sleep(0.1)
            res.recover_s = None if done_at is None or not victims else round(done_at - killed, 2)
            res.evacuated, res.lost = await checker.final(view, conn, set(victims))
            res.double_runs = len(checker.double_runs)
            dead_services = [n for n in stack.dead_services() if not n.startswith("executor-")]
            if dead_services:
                checker.violations.add(f"service(s) died: {', '.join(dead_services)}")
            res.violations = list(checker.violations.items)
            res.unplaced = list(checker.unplaced)
        finally:
            await conn.close()
            with contextlib.suppress(KafkaError):  # a restarted broker: nothing left to flush
                await producer.stop()
            await rec.stop()
            await view.stop()
    finally:
        try:
            stack.stop()
        finally:
            if net:
                net.cleanup()
        if res.violations:  # the services' logs of a failed run are the evidence: keep them
            res.violations.append(f"logs kept in {workdir / 'logs'}")
            for extra in ("pg", "shared", "nodes", "local"):
                shutil.rmtree(workdir / extra, ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


async def _order_target(rec: Recorder, exclude: set[str], timeout: float = 30.0) -> str | None:
    """The target host of the first RebuildOrder seen on the bus (orders are keyed by it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for topic, key, _ in list(rec.seen):
            if topic == str(Topic.ORDERS) and key and key.decode() not in exclude:
                return key.decode()
        await asyncio.sleep(0.01)
    return None


async def _inject(scenario: str, rng: random.Random, stack: Stack, rec: Recorder, producer: AIOKafkaProducer,
                  res: RunResult, view: ClusterView, victims: list[str], checker: InvariantChecker) -> None:
    if scenario == "service-crash":
        svc = rng.choice(("detector", "planner", "templater", "api"))
        await asyncio.sleep(rng.uniform(0.0, 2.5))
        stack.kill(svc)
        pause = rng.uniform(0.2, 2.0)
        res.faults.append(f"SIGKILL {svc}, restart after {pause:.1f}s")
        await asyncio.sleep(pause)
        stack.restart(svc)
    elif scenario == "target-crash":
        target = await _order_target(rec, set(victims))
        if target is None:
            checker.violations.add("no rebuild order was seen on the bus within 30 s")
            return
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        stack.kill(f"executor-{target}")
        checker.dead.add(target)
        victims.append(target)  # its own VMs are to be evacuated too
        res.vms += sum(1 for vm in stack.vms[target] if vm.shared)
        res.faults.append(f"SIGKILL target {target} mid-rebuild")
    elif scenario == "duplicates":
        for _ in range(2):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            n = await _replay(producer, rec, rng)
            res.faults.append(f"redeliver {n} shuffled")
    elif scenario == "broker-restart":
        await asyncio.sleep(rng.uniform(0.0, 2.5))
        down = rng.uniform(0.1, 3.0)
        await asyncio.to_thread(stack.restart_broker, down)
        res.faults.append(f"broker restart, {down:.1f}s down, every topic lost")
        await view.reconnect()
        await rec.reconnect()
    elif scenario == "postgres-restart":
        await asyncio.sleep(rng.uniform(0.0, 2.5))
        down = rng.uniform(0.1, 3.0)
        await asyncio.to_thread(stack.restart_postgres, down)
        res.faults.append(f"PostgreSQL restart, {down:.1f}s down")
    elif scenario == "poison":
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.0, 2.0))
            await _poison(producer, rng)
        res.faults.append("poison x3 on every topic")


async def _return(stack: Stack, view: ClusterView, conn: asyncpg.Connection, checker: InvariantChecker,
                  host: str, res: RunResult) -> None:
    view.reports.pop(host, None)
    checker.returned.add(host)
    checker.dead.discard(host)  # its fresh reports are sampled: a stale copy it starts is a violation
    stack.revive_host(host)
    res.faults.append(f"{host} returns")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        checker.sample(view)
        state = await conn.fetchval("SELECT state FROM hosts WHERE name=$1", host)
        if state == "up" and host in view.reports:
            return
        await asyncio.sleep(0.1)
    checker.violations.add(f"{host} did not come back up within 60s")
