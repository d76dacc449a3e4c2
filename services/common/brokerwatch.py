"""Noticing that the broker lost its data (DESIGN §6) while a service runs.

The embedded broker keeps nothing across a restart, and an Apache Kafka cluster can lose
a topic to an operator's mistake. A consumer does not say so: it rejoins its group, finds
no committed offset and goes on. So `ensure_topics` writes a random *epoch* into a
marker topic, and every service watches it: no epoch, or another epoch than the one the
service knew, means the broker's data is gone. Then the watch recreates the catalogue's
topics, marks a new epoch if there is none yet, and tells the service, which
re-publishes from PostgreSQL what the bus must carry (the planner: every pending order
and every NodeDown without its evacuation; an executor: its inventory).

A topic the clients auto-created before the watch could (tansu creates a topic on first
use, with 4 partitions) keeps its partition count: every consumer here works with the
count the topic has, so this only changes how the load spreads; it is logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client import Counter

log = logging.getLogger(__name__)

EPOCH_TOPIC = "evacuate.epoch"
RESETS = Counter("evacuate_broker_resets_total", "Times this process found the broker had lost its data")


async def ensure_epoch(bootstrap: str) -> str:
    """Create the marker topic if needed and give it an epoch if it has none. Returns the
    current epoch (the last record's value)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if EPOCH_TOPIC not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(name=EPOCH_TOPIC, num_partitions=1, replication_factor=1,
                                                    topic_configs={"retention.ms": "-1"})])  # kept for ever
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    consumer = await _epoch_reader(bootstrap)
    try:
        current = await read_epoch(consumer)
        if current is not None:
            return current
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(EPOCH_TOPIC, uuid.uuid4().hex.encode(), partition=0)
        finally:
            await producer.stop()
        # Two services may mark a new epoch at once: the last record is the epoch for all.
        return await read_epoch(consumer) or ""
    finally:
        await consumer.stop()


async def _epoch_reader(bootstrap: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=5000)
    await consumer.start()
    consumer.assign([TopicPartition(EPOCH_TOPIC, 0)])
    return consumer


async def read_epoch(consumer: AIOKafkaConsumer) -> str | None:
    """The broker's current epoch, or None if the marker topic holds no record."""
    tp = TopicPartition(EPOCH_TOPIC, 0)
    end = int((await consumer.end_offsets([tp]))[tp])
    if end == 0:
        return None
    consumer.seek(tp, end - 1)
    record = await asyncio.wait_for(consumer.getone(tp), timeout=5.0)
    return bytes(record.value or b"").decode(errors="replace")


class BrokerWatch:
    """Every `interval` seconds: is the broker's epoch still the one this service knew?
    If not (no marker at all: the data is gone; another marker: another service saw the
    loss first and marked a new epoch), recreate the topics (`ensure`), and await
    `on_reset`. Until `on_reset` succeeds the old epoch is kept, so it is tried again."""

    def __init__(self, bootstrap: str, name: str, ensure: Callable[[], Awaitable[None]],
                 on_reset: Callable[[], Awaitable[None]] | None = None, interval: float = 1.0) -> None:
        self.bootstrap = bootstrap
        self.name = name
        self.ensure = ensure
        self.on_reset = on_reset
        self.interval = interval
        self.epoch: str | None = None
        self.resets = 0

    async def run(self) -> None:
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                try:
                    if consumer is None:
                        consumer = await _epoch_reader(self.bootstrap)
                    current = await asyncio.wait_for(read_epoch(consumer), timeout=10.0)
                    if self.epoch is None and current is not None:
                        self.epoch = current  # the epoch this service started in
                    elif current is None or current != self.epoch:
                        await self.reset()
                except Exception as exc:  # noqa: BLE001 - broker away, or on_reset failed: look again
                    log.warning("%s: broker watch: %r", self.name, exc)
                    if consumer is not None:
                        await _quietly(consumer.stop())
                        consumer = None
                await asyncio.sleep(self.interval)
        finally:
            if consumer is not None:
                await _quietly(consumer.stop())

    async def reset(self) -> None:
        log.warning("%s: the broker has lost its data (restarted without storage?): recreating topics and"
                    " re-publishing from PostgreSQL", self.name)
        await self.ensure()
        current = await ensure_epoch(self.bootstrap)
        if self.on_reset is not None:
            await self.on_reset()
        self.epoch = current
        self.resets += 1
        RESETS.inc()
        log.info("%s: recovered from the broker reset (epoch %s)", self.name, current)


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(aw, timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - closing a client of a broker that is gone
        log.debug("closing a broker client: %r", exc)
