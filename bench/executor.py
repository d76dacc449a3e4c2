"""Rebuilds per second on one executor with libvirt's test driver (1,000 orders), or a
real QEMU guest's time from order to running (--qemu).

Two figures on the test driver:
  in-process  rebuild() called from a thread pool (the executor's own worker count), no bus;
  process     the real executor as its own OS process: every order published on
              evacuate.orders, timed from the first order published to the last
              RebuildResult received on evacuate.results.
With --qemu: the real executor process on an embedded QEMU driver (TCG) and the tiny guest
of tests/executor/qemu_guest.py, one order at a time: order published → RebuildResult
(libvirt says running) → the guest's first line on its serial console; then a
CleanupOrder destroys it (the next round starts a fresh UUID). The QEMU driver's
capability probe is paid at the executor's start (shown as start → first heartbeat).
A broker is started (tansu, embedded) unless EVACUATE_KAFKA_BOOTSTRAP names one.

    .venv/bin/python bench/executor.py [--orders 1000] [--workers 8]
    .venv/bin/python bench/executor.py --qemu [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
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
    CleanupOrder,
    CleanupResult,
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


async def _bench_qemu(bootstrap: str, root: Path, rounds: int) -> tuple[float, list[tuple[float, float, float, float]]]:
    """Start → first heartbeat, and (order → running, of which libvirt's define + start,
    order → console, destroy) seconds per round."""
    sys.path.insert(0, str(ROOT))
    from tests.executor import qemu_guest  # the guest the QEMU tests run: one definition of it

    missing = qemu_guest.missing_tools()
    if missing:
        raise SystemExit(f"--qemu needs {', '.join(missing)}: run scripts/install-qemu.sh")
    kernel, initrd = qemu_guest.build(Path.home() / ".cache" / "evacuate" / "qemu-guest")
    host = f"bench-q-{uuid.uuid4().hex[:6]}"
    shared = root / "shared"
    shared.mkdir(parents=True)
    embed = Path(tempfile.mkdtemp(prefix="evq-", dir="/tmp"))  # QEMU's monitor socket path is short
    await ensure_topics(bootstrap)
    results = AIOKafkaConsumer(str(Topic.HEARTBEATS), str(Topic.RESULTS), bootstrap_servers=bootstrap,
                               group_id=f"bench-{host}", auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await results.start()
    env = {**os.environ, "EVACUATE_KAFKA_BOOTSTRAP": bootstrap, "EVACUATE_HOST": host,
           "EVACUATE_LIBVIRT_URI": qemu_guest.embed_root(embed), "EVACUATE_SHARED_STORAGE": str(shared),
           "EVACUATE_LOG_LEVEL": "WARNING"}
    log = (root / "executor.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "services.executor"], env=env, cwd=ROOT,
                            stdout=log, stderr=log, start_new_session=True)
    producer = Producer(bootstrap, "bench")
    await producer.start()
    out = []
    try:
        await _wait(results, lambda m: isinstance(m, HostHeartbeat) and m.host == host, 1, 60)
        ready = time.perf_counter() - started
        for i in range(rounds):
            vm_uuid, name = str(uuid.uuid4()), f"bench-guest-{i}"
            disk, serial = shared / f"{name}.img", shared / f"{name}.log"
            disk.write_bytes(b"\0" * 2**20)
            order = RebuildOrder(
                order_id=str(uuid.uuid4()), evacuation_id="bench", item_id=name, source="-", target=host,
                instance_uuid=vm_uuid, instance_name=name, attempt=1, power_state=PowerState.RUNNING,
                xml=qemu_guest.domain_xml(vm_uuid, name, f"52:54:00:be:0e:{i % 256:02x}", kernel, initrd, disk,
                                          serial))
            t0 = time.perf_counter()
            await producer.publish(order)
            [res] = await _wait(results, lambda m, o=order: isinstance(m, RebuildResult)
                                and m.order_id == o.order_id, 1, 120)
            running = time.perf_counter() - t0
            if not res.ok:
                raise SystemExit(f"round {i}: rebuild failed: {res.error}")
            while qemu_guest.MARKER not in (serial.read_text(errors="replace") if serial.exists() else ""):
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"round {i}: no console output after 120 s")
                await asyncio.sleep(0.02)
            console = time.perf_counter() - t0
            t1 = time.perf_counter()
            await producer.publish(CleanupOrder(host=host, instances=(vm_uuid,)))
            await _wait(results, lambda m, u=vm_uuid: isinstance(m, CleanupResult) and u in m.destroyed, 1, 60)
            libvirt_s = sum(st.seconds for st in res.steps if st.name in ("define", "start"))
            out.append((running, libvirt_s, console, time.perf_counter() - t1))
        return ready, out
    finally:
        await producer.stop()
        await results.stop()
        proc.terminate()
        proc.wait(15)
        log.close()
        qemu_guest.kill_guests(embed)
        shutil.rmtree(embed, ignore_errors=True)


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
    ap.add_argument("--qemu", action="store_true", help="a real QEMU guest's time from order to running instead")
    ap.add_argument("--rounds", type=int, default=5, help="QEMU guests started one after the other (--qemu)")
    args = ap.parse_args()
    if args.qemu:
        main_qemu(args.rounds)
        return
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


def main_qemu(rounds: int) -> None:
    bootstrap = os.environ.get("EVACUATE_KAFKA_BOOTSTRAP", "")
    broker = None if bootstrap else EmbeddedBroker().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-executor-qemu-") as tmp:
            ready, got = asyncio.run(_bench_qemu(bootstrap or broker.bootstrap, Path(tmp), rounds))  # type: ignore[union-attr]
    finally:
        if broker:
            broker.stop()
    print(f"load average {os.getloadavg()[0]:.1f}; QEMU guest (TCG, 128 MiB, direct kernel boot) on a real executor;"
          f" executor start -> first heartbeat {ready:.3f}s (capability probe included)")
    print("round  order->running  (define+start)  order->console  destroy")
    for i, (running, libvirt_s, console, destroy) in enumerate(got):
        print(f"{i:5d}  {running:13.3f}s  {libvirt_s:13.3f}s  {console:13.3f}s  {destroy:6.3f}s")
    med = [statistics.median(row[k] for row in got) for k in range(4)]
    print(f"median: order->running {med[0]:.3f}s (define+start {med[1]:.3f}s), order->console {med[2]:.3f}s,"
          f" destroy {med[3]:.3f}s")


if __name__ == "__main__":
    main()
