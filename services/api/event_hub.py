"""The API process's own view of the bus for the live stream: one consumer per process
(a group id of its own, starting at the latest offsets, never committing, never
dead-lettering: it watches, it does not handle) fanned out to every subscriber through
a bounded queue. A subscriber that falls behind is dropped and told it lagged; it never
slows the consumer or the other subscribers. A short ring of recent events lets a
reconnecting client (SSE Last-Event-ID) catch up on what it missed."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.api.event_payload import TOPICS, TYPES, payload
from services.common.errors import BadMessage
from services.common.schemas import decode

log = logging.getLogger("services.api.events")

LAGGED: dict[str, Any] = {"lagged": True}  # the marker put in a queue that overflowed
CLOSED: dict[str, Any] = {"closed": True}  # the marker put in every queue when the API stops


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[dict[str, Any]]
    types: frozenset[str] | None = None  # None: every streamed type
    lagged: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        return self.types is None or event["type"] in self.types


@dataclass
class EventHub:
    queue_size: int = 256
    recent_size: int = 512
    subscribers: set[Subscriber] = field(default_factory=set)
    recent: deque[dict[str, Any]] = field(default_factory=deque)
    state: str = "starting"  # starting | ready | reconnecting
    dropped: int = 0  # subscribers dropped for lagging
    closed: bool = False
    loop: asyncio.AbstractEventLoop | None = None  # where subscribers wait (set by consume)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_size)

    def subscribe(self, types: Iterable[str] | None = None, last_id: str | None = None) -> Subscriber:
        """A new subscriber; with ``last_id`` it first gets what came after it in the ring, at
        most half a queue of the newest (more would have it lag at once, and again at each
        reconnection: it re-reads the state anyway)."""
        sub = Subscriber(asyncio.Queue(self.queue_size), frozenset(types) if types is not None else None)
        if self.closed:
            sub.queue.put_nowait(CLOSED)
            return sub
        missed = [e for e in self.since(last_id) if sub.wants(e)] if last_id else []
        for event in missed[-max(1, self.queue_size // 2):]:
            sub.queue.put_nowait(event)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def since(self, last_id: str) -> list[dict[str, Any]]:
        """Events of the ring after the one with this id; all of it when the id is unknown
        (too old, or from before this process): the client then refreshes anyway."""
        events = list(self.recent)
        for i, event in enumerate(events):
            if event["id"] == last_id:
                return events[i + 1:]
        return events

    def publish(self, event: dict[str, Any]) -> None:
        self.recent.append(event)
        for sub in list(self.subscribers):
            if sub.wants(event):
                self._offer(sub, event)

    def close(self) -> None:
        """End every stream: the server is stopping (an open stream would hold it up)."""
        self.closed = True
        for sub in list(self.subscribers):
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(CLOSED)
        self.subscribers.clear()

    def close_soon(self) -> None:
        """``close`` from a signal handler: run it in the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.close)

    def _offer(self, sub: Subscriber, event: dict[str, Any]) -> None:
        try:
            sub.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Too slow: drop what it has not read, tell it, and stop feeding it.
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(LAGGED)
            sub.lagged = True
            self.subscribers.discard(sub)
            self.dropped += 1
            log.warning("event stream: a subscriber lagged %d events behind and was dropped", self.queue_size)


def group_id() -> str:
    """Unique per API process: every process sees every event."""
    return f"api-events-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def consume(hub: EventHub, bootstrap: str, fetch_max_wait_ms: int, retry_max: float = 10.0) -> None:
    """Feed the hub for ever. The broker may be down when the API starts or later: the
    API keeps serving (the stream then only sends keepalives) and this retries."""
    group = group_id()
    hub.loop = asyncio.get_running_loop()
    # Off the recovery path: a tenth of a second is quick enough for people, and on the
    # embedded broker every empty fetch costs CPU.
    fetch_max_wait_ms = max(fetch_max_wait_ms, 100)
    delay = 1.0
    while True:
        consumer = AIOKafkaConsumer(
            *(str(t) for t in TOPICS), bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="latest",
            enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms, session_timeout_ms=6000,
            heartbeat_interval_ms=500)
        try:
            await consumer.start()
            await ready(hub, consumer)
            delay = 1.0
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        try:
                            env, msg = decode(record.value)
                        except BadMessage:
                            continue  # the services' own consumers dead-letter it
                        if env.type in TYPES:
                            hub.publish(payload(record.topic, env, msg))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream waits for the broker; the API keeps serving
            log.warning("event stream: broker not usable, retrying in %.0fs: %r", delay, exc)
            hub.state = "reconnecting"
        finally:
            try:
                await asyncio.wait_for(consumer.stop(), timeout=5.0)
            except Exception:  # noqa: BLE001 - a half-started consumer may fail to stop; it is dropped anyway
                pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_max)


async def ready(hub: EventHub, consumer: AIOKafkaConsumer, timeout: float = 30.0) -> None:
    """Wait for the partitions and their latest positions: from then on nothing is missed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not consumer.assignment():
        if loop.time() > deadline:
            raise TimeoutError(f"no partitions assigned after {timeout:.0f}s")
        await asyncio.sleep(0.05)  # the group join runs in the consumer's background task
    for tp in consumer.assignment():
        await consumer.position(tp)
    hub.state = "ready"
    log.info("event stream: reading %d partitions from their latest offsets", len(consumer.assignment()))
