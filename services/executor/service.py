"""The executor: one per compute host, the only service that touches a hypervisor. It
holds no database credentials; everything it needs arrives in its messages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common import metrics
from services.common.bus import TRANSIENT, ConsumeLoop, ConsumerSpec, Producer, broker_watch, ensure_topics
from services.common.errors import RebuildError
from services.common.runtime import gather_forever, require_infra, retry_start
from services.common.schemas import (
    CleanupOrder,
    CleanupResult,
    Envelope,
    HostHeartbeat,
    InstanceReport,
    Message,
    RebuildOrder,
    RebuildResult,
    Topic,
)
from services.common.settings import ExecutorSettings
from services.detector.storage import StorageHeartbeatWriter
from services.executor.hypervisor import Hypervisor
from services.executor.isolation import HeartbeatSender, apply_response
from services.executor.leases import LeaseStore
from services.executor.rebuild import rebuild

log = logging.getLogger("services.executor")


# Seconds between inventory reports while rebuilds are running (see `inventory`).
BUSY_REPORT_INTERVAL = 1.0

class Executor:
    def __init__(self, settings: ExecutorSettings) -> None:
        self.s = settings
        self.host = settings.host
        self.hv = Hypervisor(settings.libvirt_uri, settings.shared_storage, emulator=settings.emulator)
        self.leases = LeaseStore(settings.shared_storage, self.host, timeout=2.5 * settings.heartbeat_interval)
        self.producer = Producer(settings.kafka_bootstrap, f"executor@{self.host}", large=True)
        # Heartbeats (bus and storage) and lease renewal have their own producer and their
        # own thread: they never queue behind rebuilds.
        self.hb_sender = HeartbeatSender(settings.kafka_bootstrap, f"executor@{self.host}",
                                         request_timeout=max(2.0, min(settings.isolation_timeout, 10.0)))
        self.hb_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heartbeat")
        self.storage_hb = StorageHeartbeatWriter(settings.shared_storage, self.host)
        self.isolated_since: float | None = None  # monotonic time the isolation response began
        self.storage_renewal = True  # False once an isolation response is complete
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_rebuilds, thread_name_prefix="rebuild")
        self.limit = asyncio.Semaphore(settings.max_concurrent_rebuilds)
        self.changed = asyncio.Event()
        self.config_drive_dir = Path(settings.shared_storage) / ".evacuate" / "config-drives" / self.host
        self.orders = ConsumeLoop(
            settings.kafka_bootstrap,
            ConsumerSpec(
                name=f"executor@{self.host}", group=f"executor-{self.host}", topics=(str(Topic.ORDERS),),
                handler=self.handle, types=frozenset({"RebuildOrder", "CleanupOrder"}), key=self.host,
                # A group with no committed offset (a new host, or a broker that lost its
                # data) reads its orders from the start; an order older than order_max_age
                # is dropped (its item was retried elsewhere long ago).
                auto_offset_reset="earliest",
            ),
            self.producer, settings.fetch_max_wait_ms,
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen_orders: set[str] = set()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.hv.on_lifecycle(lambda: loop.call_soon_threadsafe(self.changed.set))
        await retry_start("broker", lambda: ensure_topics(self.s.kafka_bootstrap))
        await retry_start("producer", self.producer.start)
        await retry_start("heartbeat producer", self.hb_sender.start)
        await retry_start("orders consumer", self.orders.start)
        await self.orders.wait_assigned()
        log.info("executor %s ready on %s (pid %d)", self.host, self.hv.uri, os.getpid())
        self.hb_sender.last_ack = time.monotonic()  # the isolation clock starts with the heartbeats
        watch = broker_watch(self.s.kafka_bootstrap, f"executor@{self.host}", self.on_broker_reset)
        try:
            await gather_forever(self.heartbeats(), self.storage_heartbeats(), self.watch_isolation(),
                                 self.inventory(), self.renew_leases(), self.orders.run(), watch.run())
        finally:
            await self.orders.stop()
            await self.hb_sender.stop()
            await self.producer.stop()

    async def heartbeats(self) -> None:
        """One bus heartbeat per interval on the dedicated producer, never waiting for the
        broker: its acknowledgements (HeartbeatSender.last_ack) prove the bus is there."""
        seq = 0
        interval = self.s.heartbeat_interval
        while True:
            started = time.monotonic()
            seq += 1
            await self.hb_sender.send(HostHeartbeat(
                host=self.host, seq=seq, fence_driver=self.s.fence_driver,
                fence_target=self.s.fence_target or str(os.getpid()),
            ), timeout=interval)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def storage_heartbeats(self) -> None:
        """Replace <shared>/.evacuate/heartbeats/<host> every interval, unless an
        isolation response is complete (then the detector may count this host self-fenced)."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            if self.storage_renewal:
                try:
                    await loop.run_in_executor(self.hb_pool, self.storage_hb.write)
                    if failing:
                        log.info("storage heartbeat written again to %s", self.storage_hb.path)
                    failing = False
                except OSError as exc:
                    if not failing:
                        log.error("cannot write the storage heartbeat %s: %s", self.storage_hb.path, exc)
                    failing = True
            await asyncio.sleep(self.s.heartbeat_interval)

    async def watch_isolation(self) -> None:
        """Isolated: no heartbeat acknowledged for isolation_timeout. Apply the isolation
        response, then stop the storage heartbeat. Back: resume, restart nothing."""
        loop = asyncio.get_running_loop()
        timeout = self.s.isolation_timeout
        while True:
            silent = time.monotonic() - self.hb_sender.last_ack
            if self.isolated_since is None and silent >= timeout:
                self.isolated_since = time.monotonic()
                response = self.s.isolation_response
                log.error("ISOLATED: no heartbeat reached the broker for %.1f s (isolation_timeout %g s);"
                          " applying isolation response %r", silent, timeout, response)
                stopped = await loop.run_in_executor(
                    self.hb_pool, apply_response, self.hv, response, self.s.isolation_shutdown_timeout)
                self.storage_renewal = False
                still = "leases of the domains still running are kept" if response == "none" else (
                    f"{len(stopped)} HA domains stopped, their leases no longer renewed")
                log.error("ISOLATED: isolation response %r done (%s); storage heartbeat stopped: the"
                          " detector will count this host self-fenced once it expires", response, still)
                self.changed.set()
            elif self.isolated_since is not None and silent < timeout and self.hb_sender.last_ack > self.isolated_since:
                log.warning("bus reachable again after %.1f s isolated: storage heartbeat resumed;"
                            " domains stopped by the isolation response stay stopped",
                            time.monotonic() - self.isolated_since)
                self.isolated_since = None
                self.storage_renewal = True
                self.changed.set()
            await asyncio.sleep(min(0.1, timeout / 10))

    async def inventory(self) -> None:
        last: InstanceReport | None = None
        last_sent = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self.changed.clear()
            vcpus, mem = self.hv.capacity()
            domains = await loop.run_in_executor(self.pool, self.hv.inventory)
            report = InstanceReport(host=self.host, vcpus=vcpus, memory_mib=mem, domains=tuple(domains))
            if report != last or time.monotonic() - last_sent > self.s.inventory_interval:
                try:
                    await self.producer.publish(report)
                    last, last_sent = report, time.monotonic()
                except TRANSIENT as exc:  # the broker is away: the next round sends the report again
                    log.warning("inventory report not sent: %r", exc)
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=self.s.inventory_interval)
                await asyncio.sleep(0.05)  # coalesce a burst of lifecycle events
            except TimeoutError:
                pass
            # While rebuilds run each one changes the inventory: a full report (every domain's
            # XML) per rebuild cost the planner more than the rebuilds cost here, and it learns
            # each outcome from its RebuildResult. So one report a second then, and one as soon
            # as the last rebuild has finished.
            while self.tasks and time.monotonic() - last_sent < BUSY_REPORT_INTERVAL:
                await asyncio.sleep(0.02)

    async def renew_leases(self) -> None:
        """Renew the lease of every VM running here (on the heartbeat thread, never behind
        rebuilds). After an isolation response stopped the HA domains nothing of theirs
        runs, so nothing of theirs is renewed; with response `none` they still run, and
        their leases still say so."""
        loop = asyncio.get_running_loop()
        while True:
            uuids = await loop.run_in_executor(self.hb_pool, self.hv.running_uuids)
            for lost in await loop.run_in_executor(self.hb_pool, self.leases.renew, uuids):
                log.error("a VM running here has its lease held by %s: not renewing it", lost.holder)
            await asyncio.sleep(self.s.heartbeat_interval)

    async def on_broker_reset(self) -> None:
        self.changed.set()  # the inventory goes out again at once

    async def handle(self, env: Envelope, msg: Message) -> None:
        age = time.time() - env.at.timestamp()
        if isinstance(msg, RebuildOrder) and age > self.s.order_max_age:
            log.warning("dropped order %s for %s: %.0f s old (order_max_age %.0f s); the planner has placed it"
                        " again since", msg.order_id, msg.instance_name, age, self.s.order_max_age)
            return
        # Rebuilds run concurrently (bounded); the consume loop goes on with the next order.
        task = asyncio.ensure_future(self._run(env, msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, env: Envelope, msg: Message) -> None:
        async with self.limit:
            if isinstance(msg, RebuildOrder):
                await self._rebuild(msg)
            elif isinstance(msg, CleanupOrder):
                await self._cleanup(msg)

    async def _rebuild(self, order: RebuildOrder) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            steps, state = await loop.run_in_executor(
                self.pool, rebuild, self.hv, self.leases, order, self.host, self.config_drive_dir
            )
            result = RebuildResult(
                order_id=order.order_id, evacuation_id=order.evacuation_id, item_id=order.item_id,
                instance_uuid=order.instance_uuid, host=self.host, attempt=order.attempt, ok=True,
                power_state=state, steps=tuple(steps.done),
            )
            log.info("rebuilt %s (%s) as %s in %.3fs", order.instance_name, order.instance_uuid, state,
                     time.perf_counter() - started)
        except RebuildError as exc:
            result = RebuildResult(
                order_id=order.order_id, evacuation_id=order.evacuation_id, item_id=order.item_id,
                instance_uuid=order.instance_uuid, host=self.host, attempt=order.attempt, ok=False,
                error=str(exc), steps=tuple(exc.steps.done) if hasattr(exc, "steps") else (),
            )
            log.warning("rebuild of %s failed: %s", order.instance_name, exc)
        except Exception as exc:  # noqa: BLE001 - every order gets a result, or the planner waits for nothing
            log.exception("rebuild of %s failed unexpectedly", order.instance_name)
            result = RebuildResult(
                order_id=order.order_id, evacuation_id=order.evacuation_id, item_id=order.item_id,
                instance_uuid=order.instance_uuid, host=self.host, attempt=order.attempt, ok=False,
                error=f"unexpected: {exc!r}",
            )
        metrics.REBUILDS.labels(ok=str(result.ok).lower()).inc()
        self.changed.set()
        await self.producer.publish(result)

    async def _cleanup(self, order: CleanupOrder) -> None:
        loop = asyncio.get_running_loop()
        destroyed, errors = [], []
        for uuid in order.instances:
            try:
                if await loop.run_in_executor(self.pool, self.hv.destroy_and_undefine, uuid):
                    destroyed.append(uuid)
            except RebuildError as exc:
                errors.append(str(exc))
        log.info("cleanup: destroyed %d stale domains, %d errors", len(destroyed), len(errors))
        self.changed.set()
        await self.producer.publish(CleanupResult(host=self.host, destroyed=tuple(destroyed), errors=tuple(errors)))


async def amain(settings: ExecutorSettings) -> None:
    require_infra(settings, database=False)
    await Executor(settings).main()


