"""Which hosts this detector judges: those whose evacuate.heartbeats partition the
consumer group gave it. Several detectors run at once for availability; each one takes
the records of a newly assigned partition's hosts from PostgreSQL and forgets those of a
revoked one, so no host is judged twice and none is left unwatched."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.partitioner import DefaultPartitioner

from services.common.bus import PARTITIONS
from services.common.db import until_done
from services.common.schemas import Topic
from services.detector.fd_model import HostRecord, HostState

if TYPE_CHECKING:
    from services.detector.service import Detector


log = logging.getLogger("services.detector")
_PARTITIONER = DefaultPartitioner()


def host_partition(host: str, total: int) -> int:
    """The partition of evacuate.heartbeats a host's messages go to (the producer's own
    partitioner, on the host key)."""
    parts = list(range(total))
    return int(_PARTITIONER(host.encode(), parts, parts))


class Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.parked: dict[str, HostRecord] = {}  # records of revoked partitions, until the next assignment

    def _split(self, tps: Collection[TopicPartition]) -> tuple[set[int], int]:
        topic = str(Topic.HEARTBEATS)
        total = len(self.detector.heartbeats.consumer.partitions_for_topic(topic) or ()) or PARTITIONS[Topic.HEARTBEATS]
        return {tp.partition for tp in tps if tp.topic == topic}, total

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.drop_partitions(*self._split(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self.take_partitions(*self._split(assigned))

    async def take_partitions(self, partitions: set[int], total: int) -> None:
        """Own these partitions' hosts. A host whose record this detector parked when the
        same rebalance revoked it (the group rejoining, e.g. after a broker restart) keeps
        that record: it is newer than PostgreSQL's; others are resumed from PostgreSQL.
        Either way with fresh windows: the time nobody watched a host is neither its bus
        silence nor its storage silence, so no expiry is proven by a gap in watching."""
        d = self.detector
        assert d.pool is not None
        d.owned |= partitions
        now = time.time()
        d.heard.own(partitions, now)
        taken = kept = 0
        pool = d.pool
        rows = await until_done("resume host records", lambda: pool.fetch(
            "SELECT name, detector, fence_target FROM hosts WHERE detector IS NOT NULL"))
        for r in rows:
            if host_partition(r["name"], total) not in partitions or r["name"] in d.hosts:
                continue
            parked = self.parked.pop(r["name"], None)
            rec = parked if parked is not None else HostRecord.from_dict(r["detector"])
            kept += parked is not None
            taken += parked is None
            if rec.state in (HostState.up, HostState.suspect):
                rec = replace(rec, last_heartbeat=now)
            if rec.state != HostState.down and rec.last_storage_heartbeat is not None:
                rec = replace(rec, last_storage_heartbeat=max(rec.last_storage_heartbeat, now))
            d.hosts[r["name"]] = rec
            d.fence_targets[r["name"]] = r["fence_target"]
        self.parked.clear()
        log.info("owning heartbeat partitions %s: %d hosts kept, %d resumed from the database", sorted(d.owned),
                 kept, taken)

    def drop_partitions(self, partitions: set[int], total: int) -> None:
        """Another detector may own these hosts now; their records are in PostgreSQL.
        Parked until the rebalance's assignment says whether they come back here."""
        d = self.detector
        d.owned -= partitions
        d.heard.drop(partitions)
        for name in [n for n in d.hosts if host_partition(n, total) in partitions]:
            self.parked[name] = d.hosts.pop(name)
