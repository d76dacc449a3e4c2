"""The Kafka side of every service: topic creation, a producer with acks=all (the
embedded broker has no idempotent producer, so consumers are idempotent instead) and a
consume loop that sends anything unusable to the dead-letter topic and goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from services.common import metrics
from services.common.brokerwatch import BrokerWatch, ensure_epoch
from services.common.db import DB_TRANSIENT
from services.common.errors import BadMessage, InfraError
from services.common.runtime import log_context
from services.common.schemas import (
    DeadLetter,
    Envelope,
    Message,
    Topic,
    decode_body,
    decode_envelope,
    encode,
    wrap,
)

log = logging.getLogger(__name__)

# At most 4: a broker that lost its data (the embedded broker, restarted) re-creates a
# topic on a client's first use with 4 partitions, before a service can create it from
# this catalogue. A producer that knew more partitions than the new topic has would keep
# retrying records for partitions that no longer exist; growing is harmless.
PARTITIONS: dict[Topic, int] = {
    Topic.HEARTBEATS: 4,
    Topic.HOST_EVENTS: 4,
    Topic.PLANS: 4,
    Topic.ORDERS: 4,
    Topic.RESULTS: 4,
    Topic.EVACUATIONS: 2,
    Topic.DEAD_LETTER: 1,
}

# Errors that mean "the infrastructure is not there right now": retry, never dead-letter.
TRANSIENT: tuple[type[BaseException], ...] = (*DB_TRANSIENT, KafkaError, asyncio.TimeoutError)


async def ensure_topics(bootstrap: str) -> None:
    """Create every topic of the catalogue that does not exist yet, and mark the broker's
    epoch (see brokerwatch)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=str(t), num_partitions=n, replication_factor=1)
            for t, n in PARTITIONS.items()
            if str(t) not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        present = [str(t) for t in PARTITIONS if str(t) in existing]
        for desc in await admin.describe_topics(present) if present else []:
            want = PARTITIONS[Topic(desc["topic"])]
            if len(desc.get("partitions") or ()) != want:
                log.warning("topic %s has %d partitions, the catalogue says %d (created by a client's first use?):"
                            " it works, only the load spreads differently", desc["topic"],
                            len(desc.get("partitions") or ()), want)
    finally:
        await admin.close()
    await ensure_epoch(bootstrap)


def broker_watch(bootstrap: str, name: str, on_reset: Callable[[], Awaitable[None]] | None = None) -> BrokerWatch:
    """A service's watch for a broker that lost its data (see brokerwatch)."""
    return BrokerWatch(bootstrap, name, lambda: ensure_topics(bootstrap), on_reset)


class Producer:
    def __init__(self, bootstrap: str, source: str, large: bool = False) -> None:
        """`large`: messages may be big (an executor's InstanceReport carries every
        domain's XML: ~1.5 MB at 1,000 domains, over Kafka's 1 MB default): gzip them
        (XML shrinks ~10x) and allow requests up to 16 MiB."""
        self.source = source
        extra: dict[str, object] = {"compression_type": "gzip", "max_request_size": 16 * 1024 * 1024} if large else {}
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, enable_idempotence=False, **extra
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, message: Message, message_id: str | None = None) -> Envelope:
        env = wrap(message, self.source, message_id)
        await self.send_raw(str(type(message).TOPIC), message.key(), encode(env))
        return env

    async def send_raw(self, topic: str, key: str | None, value: bytes, patience: float = 30.0) -> None:
        """Send and wait for the broker's acknowledgement. A broker error (one that is
        restarting answers UnknownError, NotLeader... for a moment) is retried with backoff
        for `patience` seconds before it is raised: a message is never dropped silently."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        backoff = 0.1
        while True:
            try:
                await self._producer.send_and_wait(topic, value, key=key.encode() if key else None)
                return
            except KafkaError as exc:
                if loop.time() + backoff > deadline:
                    raise
                log.warning("send to %s failed, retrying in %.1f s: %r", topic, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def send_many(self, rows: Iterable[tuple[str, str | None, bytes]]) -> None:
        futures = [
            await self._producer.send(topic, value, key=key.encode() if key else None)
            for topic, key, value in rows
        ]
        await asyncio.gather(*futures)

    async def dead_letter(self, record: ConsumerRecord, reason: str, consumer: str) -> None:
        key = record.key.decode(errors="backslashreplace") if record.key else None
        raw: bytes = record.value or b""
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original_key=key,
            original=raw.decode("utf-8", errors="backslashreplace"),
            reason=reason,
            consumer=consumer,
        )
        await self.publish(letter)
        metrics.DEAD_LETTERS.labels(consumer=consumer, topic=record.topic).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )


Handler = Callable[[Envelope, Message], Awaitable[None]]
BatchHandler = Callable[[list[tuple[Envelope, Message]]], Awaitable[None]]


@dataclass
class ConsumerSpec:
    name: str  # used in logs, metrics and dead letters
    group: str
    topics: tuple[str, ...]
    handler: Handler
    types: frozenset[str] | None = None  # message types to handle; others are skipped
    key: str | None = None  # only handle records with this key (executor: its host)
    auto_offset_reset: str = "earliest"
    max_handler_attempts: int = 3
    listener: ConsumerRebalanceListener | None = None  # told which partitions this member owns
    # None: the service's setting. A consumer off the recovery path (inventory, live
    # stream) polls less often: on the embedded broker every empty fetch costs CPU.
    fetch_max_wait_ms: int | None = None
    # Consecutive records of these types in one fetched batch go to `batch_handler` together
    # (one transaction for many results, say). It must be all-or-nothing: if it raises
    # anything but a transient error, the records are handled one by one by `handler`,
    # which keeps the retry and dead-letter rules per message.
    batch_types: frozenset[str] = frozenset()
    # How long one poll waits for records before the loop goes round (and calls _fetched).
    poll_timeout_ms: int = 1000
    batch_handler: BatchHandler | None = None


class ConsumeLoop:
    """Consume, decode, handle, commit. Bad messages go to the dead-letter topic.

    A handler that raises a transient error (database or broker unreachable) is retried
    with backoff and the offset is not committed; one that raises anything else
    ``max_handler_attempts`` times is dead-lettered with the error, so one poison
    message never blocks its partition.
    """

    def __init__(self, bootstrap: str, spec: ConsumerSpec, producer: Producer, fetch_max_wait_ms: int) -> None:
        self.spec = spec
        self.producer = producer
        self.consumer = AIOKafkaConsumer(
            *(() if spec.listener else spec.topics),
            bootstrap_servers=bootstrap,
            group_id=spec.group,
            enable_auto_commit=False,
            auto_offset_reset=spec.auto_offset_reset,
            fetch_max_wait_ms=spec.fetch_max_wait_ms or fetch_max_wait_ms,
            max_poll_records=500,
            # A replaced (crashed) member is noticed sooner: a restarted service rejoins in
            # ~4 s instead of ~8 s on the embedded broker (6 s is Kafka's minimum session).
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        if spec.listener is not None:
            self.consumer.subscribe(topics=list(spec.topics), listener=spec.listener)
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Block until partitions are assigned and their positions resolved, so that
        nothing published after this returns can be missed (matters for 'latest')."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.consumer.assignment():
            if loop.time() > deadline:
                raise InfraError(f"{self.spec.name}: no partitions assigned after {timeout}s")
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)
        self.ready.set()

    async def run(self) -> None:
        spec = self.spec
        while True:
            batch = await self.consumer.getmany(timeout_ms=spec.poll_timeout_ms)
            if not self.ready.is_set() and self.consumer.assignment():
                self.ready.set()
            for tp, records in batch.items():
                if spec.batch_handler is None:
                    for record in records:
                        await self._handle(record)
                else:
                    await self._handle_batched(records)
                await self._commit(tp, records[-1].offset + 1)
            await self._fetched()
            if not batch:
                continue
            log.debug("%s handled %d records", spec.name, sum(len(r) for r in batch.values()))

    async def _fetched(self) -> None:
        """Called after each batch (or empty poll) is handled; a subclass may look at
        positions and high watermarks here."""

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self.consumer.commit({tp: offset})
        except KafkaError as exc:  # a rebalance: the next owner re-reads; handlers are idempotent
            log.warning("%s: commit of %s@%d failed: %s", self.spec.name, tp, offset, exc)

    async def _decode(self, record: ConsumerRecord) -> tuple[Envelope, Message] | None:
        """The record's envelope and message; None if it is not ours or was dead-lettered."""
        spec = self.spec
        if spec.key is not None and (record.key or b"").decode(errors="replace") != spec.key:
            return None
        try:
            env = decode_envelope(record.value)
            if spec.types is not None and env.type not in spec.types:
                return None  # not ours: its own consumer validates (and, if bad, dead-letters) its body
            return env, decode_body(env)
        except BadMessage as exc:
            await self.producer.dead_letter(record, str(exc), spec.name)
            return None

    async def _handle_batched(self, records: list[ConsumerRecord]) -> None:
        """Records in order; runs of consecutive batch_types records go to the batch handler."""
        run: list[tuple[ConsumerRecord, Envelope, Message]] = []
        for record in records:
            decoded = await self._decode(record)
            if decoded is None:
                continue
            if decoded[0].type in self.spec.batch_types:
                run.append((record, *decoded))
                continue
            await self._flush(run)
            run = []
            await self._dispatch(record, *decoded)
        await self._flush(run)

    async def _flush(self, run: list[tuple[ConsumerRecord, Envelope, Message]]) -> None:
        spec = self.spec
        if len(run) < 2 or spec.batch_handler is None:
            for record, env, msg in run:
                await self._dispatch(record, env, msg)
            return
        backoff = 0.2
        while True:
            try:
                with metrics.HANDLER_SECONDS.labels(consumer=spec.name, type="batch").time():
                    await spec.batch_handler([(env, msg) for _, env, msg in run])
                for _, env, _ in run:
                    metrics.HANDLED.labels(consumer=spec.name, type=env.type).inc()
                return
            except TRANSIENT as exc:
                log.warning("%s: batch of %d: transient error, retrying: %r", spec.name, len(run), exc)
            except Exception as exc:  # noqa: BLE001 - one by one finds the poison message and keeps the rest
                if isinstance(exc, BadMessage):  # a bad message: dead-lettered one by one, no traceback needed
                    log.warning("%s: batch of %d: %s: handling its messages one by one", spec.name, len(run), exc)
                else:
                    log.exception("%s: batch of %d failed: handling its messages one by one", spec.name, len(run))
                for record, env, msg in run:
                    await self._dispatch(record, env, msg)
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _handle(self, record: ConsumerRecord) -> None:
        decoded = await self._decode(record)
        if decoded is not None:
            await self._dispatch(record, *decoded)

    async def _dispatch(self, record: ConsumerRecord, env: Envelope, msg: Message) -> None:
        data = env.data
        evacuation_id = data.get("evacuation_id")
        host = data.get("host") or data.get("source")  # the host a message is about (the failed one for a plan)
        with log_context(env.id, str(evacuation_id) if evacuation_id else None, str(host) if host else None):
            await self._handle_decoded(record, env, msg)

    async def _handle_decoded(self, record: ConsumerRecord, env: Envelope, msg: Message) -> None:
        spec = self.spec
        attempt = 0
        backoff = 0.2
        while True:
            attempt += 1
            try:
                with metrics.HANDLER_SECONDS.labels(consumer=spec.name, type=env.type).time():
                    await spec.handler(env, msg)
                metrics.HANDLED.labels(consumer=spec.name, type=env.type).inc()
                return
            except BadMessage as exc:
                await self.producer.dead_letter(record, f"{env.type} {env.id}: {exc}", spec.name)
                return
            except TRANSIENT as exc:
                log.warning("%s: %s %s: transient error, retrying: %r", spec.name, env.type, env.id, exc)
            except Exception as exc:  # noqa: BLE001 - a poison message must not stop the loop
                metrics.FAILED.labels(consumer=spec.name, type=env.type).inc()
                log.exception("%s: handler failed on %s %s (attempt %d)", spec.name, env.type, env.id, attempt)
                if attempt >= spec.max_handler_attempts:
                    await self.producer.dead_letter(
                        record, f"handler failed {attempt} times: {exc!r}", spec.name
                    )
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
