"""Transactional outbox: a handler writes the messages it emits into the ``outbox``
table in the same transaction as its state change; the relay publishes them and
deletes them. A crash between the two re-publishes (at-least-once); consumers are
idempotent by message id."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.common import metrics
from services.common.bus import TRANSIENT, Producer
from services.common.schemas import Envelope, Message, encode, wrap

log = logging.getLogger(__name__)

CHANNEL = "evacuate_outbox"


async def emit(conn: asyncpg.Connection, message: Message, source: str,
               message_id: str | None = None) -> Envelope:
    env = wrap(message, source, message_id)
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3)",
        str(type(message).TOPIC), message.key(), encode(env),
    )
    await conn.execute(f"NOTIFY {CHANNEL}")
    return env


def _alive(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # released back to the pool by its reset after an error
        return False


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, producer: Producer, service: str, batch: int = 500) -> None:
        self.pool = pool
        self.producer = producer
        self.service = service
        self.batch = batch
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            # Cancelled at shutdown: give the listening connection back, or closing the pool waits for it.
            self._listener = await self._drop(self._listener)

    async def _loop(self) -> None:
        while True:
            try:
                if self._listener is None or not _alive(self._listener):
                    self._listener = await self._drop(self._listener)
                    self._listener = await self.pool.acquire()
                    await self._listener.add_listener(CHANNEL, lambda *_: self._wake.set())
                while await self.publish_once():
                    pass
            except (*TRANSIENT, asyncpg.PostgresError) as exc:
                # The database restarting cuts the listening connection too: take a new one.
                log.warning("outbox relay (%s): %r; retrying", self.service, exc)
                self._listener = await self._drop(self._listener)
                await asyncio.sleep(1.0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _drop(self, listener: asyncpg.Connection | None) -> None:
        if listener is None:
            return None
        try:
            await asyncio.wait_for(self.pool.release(listener), timeout=2.0)
        except Exception:  # noqa: BLE001 - a dead connection: make sure it is gone
            try:
                listener.terminate()
            except Exception as exc:  # noqa: BLE001
                log.debug("outbox listener already gone: %r", exc)
        return None

    async def publish_once(self) -> bool:
        """Publish one batch; True when there may be more."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, topic, key, payload FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return False
            await self.producer.send_many((r["topic"], r["key"], bytes(r["payload"])) for r in rows)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        metrics.OUTBOX_PUBLISHED.labels(service=self.service).inc(len(rows))
        return len(rows) == self.batch
