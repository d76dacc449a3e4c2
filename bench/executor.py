"""Rebuilds per second on one executor with libvirt's test driver (1,000 orders).

Two figures:
  in-process  rebuild() called from a thread pool (the executor's own worker count), no bus;
  process     the real executor as its own OS process: every order published on
              evacuate.orders, timed from the first order published to the last
              RebuildResult received on evacuate.results.
A broker is started (tansu, embedded) unless EVACUATE_KAFKA_BOOTSTRAP names one.

    .venv/bin/python bench/executor.py [--orders 1000] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from services.common.bus import Producer, ensure_topics
from services.common.embedded import EmbeddedBroker
from services.common.schemas import (
    HostHeartbeat,
    PowerState,
    RebuildOrder,
    RebuildResult,
    Topic,
    decode,
    encode,
    wrap,
)
from services.evacctl.simcluster import SimVM, domain_xml, plan_vms, write_node
from services.executor.hypervisor import Hypervisor
from services.executor.leases import LeaseStore
from services.executor.rebuild import rebuild

ROOT = Path(__file__).resolve().parents[1]


def make_orders(root: Path, target: str, count: int) -> tuple[Path, list[RebuildOrder]]:
    """``count`` VMs of a failed host h1 (10% shut off), disks on ``root/shared``."""
    shared, local = root / "shared", root / "local"
    shared.mkdir(parents=True)
    vms: list[SimVM] = plan_vms(1, "h1", count, shutoff=count // 10, local=0)
    orders = []
    for vm in vms:
        (shared / f"{vm.name}.qcow2").touch()
        orders.append(RebuildOrder(
            order_id=str(uuid.uuid4()), evacuation_id="bench", item_id=vm.name, source="h1", target=target,
            instance_uuid=vm.uuid, instance_name=vm.name, attempt=1, xml=domain_xml(vm, shared, local),
            power_state=PowerState.RUNNING if vm.running else PowerState.SHUTOFF,
        ))
    return shared, orders


def bench_in_process(root: Path, count: int, workers: int) -> tuple[float, int]:
    shared, orders = make_orders(root, "bench-inproc", count)
    hv = Hypervisor(write_node(root / "node.xml", [], shared, root / "local"), str(shared))
    leases = LeaseStore(str(shared), "bench-inproc", timeout=2.5)
    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(rebuild, hv, leases, o, "bench-inproc", root / "cd") for o in orders]
        states = [f.result()[1] for f in futures]
        seconds = time.perf_counter() - t0
    assert len(hv.conn.listAllDomains()) == count
    return seconds, sum(1 for s in states if s == PowerState.RUNNING)


async def _bench_process(bootstrap: str, root: Path, count: int, workers: int) -> tuple[float, int, int]:
    host = f"bench-{uuid.uuid4().hex[:6]}"
    shared, orders = make_orders(root, host, count)
    await ensure_topics(bootstrap)
    results = AIOKafkaConsumer(str(Topic.HEARTBEATS), str(Topic.RESULTS), bootstrap_servers=bootstrap,
                               group_id=f"bench-{host}", auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await results.start()
    env = {**os.environ, "EVACUATE_KAFKA_BOOTSTRAP": bootstrap, "EVACUATE_HOST": host,
           "EVACUATE_LIBVIRT_URI": write_node(root / "node.xml", [], shared, root / "local"),
           "EVACUATE_SHARED_STORAGE": str(shared), "EVACUATE_MAX_CONCURRENT_REBUILDS": str(workers),
           "EVACUATE_LOG_LEVEL": "WARNING"}
    log = (root / "executor.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.executor"], env=env, cwd=ROOT,
                            stdout=log, stderr=log, start_new_session=True)
    producer = Producer(bootstrap, "bench")
    await producer.start()
    try:
        await _wait(results, lambda m: isinstance(m, HostHeartbeat) and m.host == host, 1, 60)
        t0 = time.perf_counter()
        await producer.send_many((str(Topic.ORDERS), host, encode(wrap(o, "bench"))) for o in orders)
        got = await _wait(results, lambda m: isinstance(m, RebuildResult) and m.host == host, count, 300)
        seconds = time.perf_counter() - t0
        return seconds, sum(1 for m in got if m.ok), len({m.order_id for m in got})  # type: ignore[attr-defined]
    finally:
        await producer.stop()
        await results.stop()
        proc.terminate()
        proc.wait(10)
        log.close()


async def _wait(consumer: AIOKafkaConsumer, pred, count: int, timeout: float) -> list:  # type: ignore[no-untyped-def]
    got: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while len(got) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(got)} of {count} expected messages after {timeout}s")
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for r in records:
                msg = decode(r.value)[1]
                if pred(msg):
                    got.append(msg)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8, help="rebuilds at once (EVACUATE_MAX_CONCURRENT_REBUILDS)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-executor-") as tmp:
        seconds, running = bench_in_process(Path(tmp) / "inproc", args.orders, args.workers)
        print(f"in-process rebuild(), {args.workers} threads: {args.orders} orders ({running} started) "
              f"in {seconds:.3f}s = {args.orders / seconds:,.0f} rebuilds/s")
        bootstrap = os.environ.get("EVACUATE_KAFKA_BOOTSTRAP", "")
        broker = None if bootstrap else EmbeddedBroker().start()
        try:
            seconds, ok, distinct = asyncio.run(_bench_process(
                bootstrap or broker.bootstrap, Path(tmp) / "process", args.orders, args.workers))  # type: ignore[union-attr]
        finally:
            if broker:
                broker.stop()
        print(f"executor process over the broker, {args.workers} concurrent: {args.orders} orders -> "
              f"{ok} ok of {distinct} results in {seconds:.3f}s = {args.orders / seconds:,.0f} rebuilds/s "
              "(first order published to last result received)")


if __name__ == "__main__":
    main()
