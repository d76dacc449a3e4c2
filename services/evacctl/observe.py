"""An independent view of the cluster, read off the bus: the newest InstanceReport of
every host (what its libvirt really has). The demo and the process tests judge an
evacuation by this view, not by the planner's own records."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from services.common.errors import BadMessage
from services.common.schemas import DomainInfo, InstanceReport, Topic, decode


class ClusterView:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = self._consumer()
        self.reports: dict[str, InstanceReport] = {}
        self.report_time: dict[str, float] = {}  # when the newest report arrived here
        self.report_at: dict[str, float] = {}  # when its host sent it (a buffered report arrives late)
        self._task: asyncio.Task[None] | None = None

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            str(Topic.HEARTBEATS), bootstrap_servers=self.bootstrap, group_id=f"observer-{uuid.uuid4()}",
            auto_offset_reset="latest", fetch_max_wait_ms=10, enable_auto_commit=False,
        )

    async def reconnect(self) -> None:
        """After a broker restart: a new consumer on the new broker; the reports seen so
        far stay until each host reports again."""
        await self.stop()
        self.consumer = self._consumer()
        await self.start()

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        with suppress(KafkaError, asyncio.CancelledError):  # its broker was restarted under it
            await self.consumer.stop()

    async def _run(self) -> None:
        async for record in self.consumer:
            try:
                env, msg = decode(record.value)
            except BadMessage:
                continue
            if isinstance(msg, InstanceReport):
                if env.at.timestamp() < self.report_at.get(msg.host, 0.0):
                    continue  # an older report delivered late (a duplicate, a replay): not the host's truth
                self.reports[msg.host] = msg
                self.report_time[msg.host] = time.time()
                self.report_at[msg.host] = env.at.timestamp()

    def where(self, vm_uuid: str, exclude: set[str] | None = None) -> list[tuple[str, DomainInfo]]:
        """Every host whose newest report has this VM defined."""
        out = []
        for host, rep in sorted(self.reports.items()):
            if exclude and host in exclude:
                continue
            out.extend((host, d) for d in rep.domains if d.uuid == vm_uuid)
        return out
