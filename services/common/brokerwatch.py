"""Noticing that the broker lost its data (DESIGN §6) while a service runs.

The embedded broker keeps nothing across a restart, and an Apache Kafka cluster can lose
a topic to an operator's mistake. A consumer does not say so: it rejoins its group, finds
no committed offset and goes on. So `ensure_topics` writes one record into a marker topic
(the *epoch*), and every service watches it: a marker topic with no record means the
broker's data is gone. Then the watch recreates the catalogue's topics, writes a new
marker and tells the service, which re-publishes from PostgreSQL what the bus must carry
(the planner: every pending order and every NodeDown without its evacuation; an
executor: its inventory).

A topic the clients auto-created before the watch could (tansu creates a topic on first
use, with 4 partitions) keeps its partition count: every consumer here works with the
count the topic has, so this only changes how the load spreads; it is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client import Counter

log = logging.getLogger(__name__)

EPOCH_TOPIC = "evacuate.epoch"
RESETS = Counter("evacuate_broker_resets_total", "Times this process found the broker had lost its data")


async def ensure_epoch(bootstrap: str) -> bool:
    """Create the marker topic if needed and give it a record if it has none. True when
    it had none (a new or reset broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if EPOCH_TOPIC not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(name=EPOCH_TOPIC, num_partitions=1, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    if await epoch_records(bootstrap) > 0:
        return False
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(EPOCH_TOPIC, b"epoch", partition=0)
    finally:
        await producer.stop()
    return True


async def epoch_records(bootstrap: str, consumer: AIOKafkaConsumer | None = None) -> int:
    own = consumer is None
    if consumer is None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
    try:
        tp = TopicPartition(EPOCH_TOPIC, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        if own:
            await consumer.stop()


class BrokerWatch:
    """Every `interval` seconds: does the marker topic still hold its record? If not,
    recreate the topics (`ensure`), mark the new epoch and await `on_reset`."""

    def __init__(self, bootstrap: str, name: str, ensure: Callable[[], Awaitable[None]],
                 on_reset: Callable[[], Awaitable[None]] | None = None, interval: float = 1.0) -> None:
        self.bootstrap = bootstrap
        self.name = name
        self.ensure = ensure
        self.on_reset = on_reset
        self.interval = interval
        self.resets = 0

    async def run(self) -> None:
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    if consumer is None:
                        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                                    request_timeout_ms=5000)
                        await consumer.start()
                    if await asyncio.wait_for(epoch_records(self.bootstrap, consumer), timeout=5.0) > 0:
                        continue
                    await self.reset()
                except Exception as exc:  # noqa: BLE001 - broker away: look again next round
                    log.debug("%s: broker watch: %r", self.name, exc)
                    if consumer is not None:
                        await _quietly(consumer.stop())
                        consumer = None
        finally:
            if consumer is not None:
                await _quietly(consumer.stop())

    async def reset(self) -> None:
        log.warning("%s: the broker has lost its data (restarted without storage?): recreating topics and"
                    " re-publishing from PostgreSQL", self.name)
        await self.ensure()
        await ensure_epoch(self.bootstrap)
        self.resets += 1
        RESETS.inc()
        if self.on_reset is not None:
            await self.on_reset()
        log.info("%s: recovered from the broker reset", self.name)


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(aw, timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - closing a client of a broker that is gone
        log.debug("closing a broker client: %r", exc)
