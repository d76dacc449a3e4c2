"""The executor as its own OS process on the real broker and the libvirt test driver:
orders in on evacuate.orders, results out on evacuate.results, inventory on
evacuate.heartbeats; bad orders fail with a reason and the executor goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from services.common.bus import Producer
from services.common.embedded import EmbeddedBroker
from services.common.schemas import (
    CleanupOrder,
    CleanupResult,
    HostHeartbeat,
    InstanceReport,
    Message,
    PowerState,
    RebuildResult,
    Topic,
    decode,
    encode,
    wrap,
)
from services.evacctl.simcluster import write_node

from .conftest import Site

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
HOST = f"exec-{uuid.uuid4().hex[:6]}"


class Inbox:
    """Everything the executor under test publishes, in arrival order."""

    def __init__(self, bootstrap: str, hosts: tuple[str, ...] = (HOST,)) -> None:
        self.hosts = hosts
        self.consumer = AIOKafkaConsumer(
            str(Topic.HEARTBEATS), str(Topic.RESULTS), bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4()}",
            auto_offset_reset="earliest", fetch_max_wait_ms=10)
        self.seen: list[Message] = []

    async def until(self, pred: Callable[[Message], bool], timeout: float = 30.0, after: int = 0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.seen[after:]:
                if pred(m):
                    return m
            after = len(self.seen)
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing matched within {timeout}s; last seen: {self.seen[-3:]}")
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    _, msg = decode(r.value)
                    if getattr(msg, "host", None) in self.hosts:
                        self.seen.append(msg)


@pytest.fixture
def executor(site: Site, broker: EmbeddedBroker) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    stale = site.vm(9, host_index=3)
    site.xml(stale)
    uri = write_node(site.root / "node.xml", [stale], site.shared, site.local)
    log = site.root / "executor.log"
    env = {**os.environ, "EVACUATE_KAFKA_BOOTSTRAP": broker.bootstrap, "EVACUATE_HOST": HOST,
           "EVACUATE_LIBVIRT_URI": uri, "EVACUATE_SHARED_STORAGE": str(site.shared),
           "EVACUATE_HEARTBEAT_INTERVAL": "0.3", "EVACUATE_INVENTORY_INTERVAL": "2"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.executor"], env=env, stdout=out, stderr=out,
                                cwd=Path(__file__).parents[2], start_new_session=True)
    yield proc, log
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
async def inbox(broker: EmbeddedBroker) -> AsyncIterator[Inbox]:
    box = Inbox(broker.bootstrap)
    await box.consumer.start()
    yield box
    await box.consumer.stop()


async def test_executor_process_rebuilds_refuses_bad_orders_goes_on_and_cleans_up(
        site: Site, broker: EmbeddedBroker, executor: tuple[subprocess.Popen[bytes], Path], inbox: Inbox) -> None:
    proc, log = executor
    await inbox.until(lambda m: isinstance(m, HostHeartbeat), timeout=45)
    stale = site.vm(9, host_index=3)

    vms = {k: site.vm(i) for i, k in enumerate(("running", "shutoff", "paused", "missing", "last", "elsewhere"))}
    orders = {
        "running": site.order(vms["running"], site.xml(vms["running"]), target=HOST),
        "malformed": site.order(vms["running"], "<domain><uuid>", target=HOST).model_copy(
            update={"instance_uuid": str(uuid.uuid4())}),
        "shutoff": site.order(vms["shutoff"], site.xml(vms["shutoff"]), PowerState.SHUTOFF, target=HOST),
        "missing": site.order(vms["missing"], site.xml(vms["missing"], create_disk=False), target=HOST),
        "wrong-target": site.order(vms["elsewhere"], site.xml(vms["elsewhere"]), target="some-other-host"),
        "paused": site.order(vms["paused"], site.xml(vms["paused"]), PowerState.PAUSED, target=HOST),
        "last": site.order(vms["last"], site.xml(vms["last"]), target=HOST),
    }
    producer = Producer(broker.bootstrap, "test")
    await producer.start()
    try:
        not_mine = site.order(vms["elsewhere"], site.xml(vms["elsewhere"]), target="some-other-host")
        await producer.publish(not_mine)  # keyed by its own target: this executor never sees it
        for o in orders.values():
            await producer.send_raw(str(Topic.ORDERS), HOST, encode(wrap(o, "test")))
        by_order: dict[str, RebuildResult] = {}
        for name, o in orders.items():
            r = await inbox.until(lambda m, o=o: isinstance(m, RebuildResult) and m.order_id == o.order_id)
            assert isinstance(r, RebuildResult)
            by_order[name] = r

        for name in ("running", "shutoff", "paused", "last"):
            assert by_order[name].ok, (name, by_order[name].error)
            assert by_order[name].steps[-1].name == "verify"
        assert by_order["running"].power_state == by_order["last"].power_state == PowerState.RUNNING
        assert by_order["shutoff"].power_state == PowerState.SHUTOFF
        assert by_order["paused"].power_state == PowerState.PAUSED
        bad = {n: by_order[n] for n in ("malformed", "missing", "wrong-target")}
        assert all(not r.ok and r.steps and r.steps[-1].name == "validate" for r in bad.values()), bad
        assert (bad["malformed"].error or "").startswith("validate: malformed domain XML")
        assert f"disk vda missing: {site.shared / vms['missing'].name}.qcow2 does not exist" in (
            bad["missing"].error or "")
        assert "'some-other-host'" in (bad["wrong-target"].error or "")
        assert not any(isinstance(m, RebuildResult) and m.order_id == not_mine.order_id for m in inbox.seen)

        mark = len(inbox.seen)
        await producer.publish(CleanupOrder(host=HOST, instances=(stale.uuid, str(uuid.uuid4()))))
        done = await inbox.until(lambda m: isinstance(m, CleanupResult), after=mark)
        assert isinstance(done, CleanupResult) and done.destroyed == (stale.uuid,) and done.errors == ()
        assert (site.shared / f"{stale.name}.qcow2").exists()

        want = {vms[n].uuid: s for n, s in (("running", PowerState.RUNNING), ("shutoff", PowerState.SHUTOFF),
                                             ("paused", PowerState.PAUSED), ("last", PowerState.RUNNING))}
        # A report being read while the cleanup ran may still list the stale copy; the one after it must not.
        report = await inbox.until(lambda m: isinstance(m, InstanceReport)
                                   and {d.uuid: d.power_state for d in m.domains} == want,
                                   timeout=10, after=len(inbox.seen))
        assert isinstance(report, InstanceReport)
        for d in report.domains:
            vm = next(v for v in vms.values() if v.uuid == d.uuid)
            assert (d.name, [n.mac for n in d.nics], d.evacuable) == (vm.name, [vm.mac], True)
    finally:
        await producer.stop()
    assert proc.poll() is None, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
