"""Which hosts this detector judges: those whose evacuate.heartbeats partition the
consumer group gave it. Several detectors run at once for availability; each one takes
the records of a newly assigned partition's hosts from PostgreSQL and forgets those of a
revoked one, so no host is judged twice and none is left unwatched."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.partitioner import DefaultPartitioner

from services.common.bus import PARTITIONS
from services.common.schemas import Topic

if TYPE_CHECKING:
    from services.detector.service import Detector


_PARTITIONER = DefaultPartitioner()


def host_partition(host: str, total: int) -> int:
    """The partition of evacuate.heartbeats a host's messages go to (the producer's own
    partitioner, on the host key)."""
    parts = list(range(total))
    return int(_PARTITIONER(host.encode(), parts, parts))


class Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    def _split(self, tps: Collection[TopicPartition]) -> tuple[set[int], int]:
        topic = str(Topic.HEARTBEATS)
        total = len(self.detector.heartbeats.consumer.partitions_for_topic(topic) or ()) or PARTITIONS[Topic.HEARTBEATS]
        return {tp.partition for tp in tps if tp.topic == topic}, total

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.detector.drop_partitions(*self._split(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self.detector.take_partitions(*self._split(assigned))
