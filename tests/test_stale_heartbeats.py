"""Old heartbeats delivered again (issue 10: duplicate and reordered deliveries of every
message type). The detector stamps a heartbeat with the time it reads it, so a dead host's
old heartbeats delivered twice — a producer retry, a re-read after a rebalance, a replay —
looked like a host that came back: `returning`, NodeUp, a cleanup order to a dead host.
They are now told apart by the host's own sequence number and send time."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.schemas import Topic
from services.evacctl.demo import wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = ("sh1", "sh2")


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("stale-heartbeats")), kafka_bootstrap="", database_url=database_url,
              fresh_database=True)
    s.start_infra()
    s.start_services()
    for i, h in enumerate(HOSTS, 1):
        s.add_host(70 + i, h, vm_count=2, shutoff=0, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


async def _records(bootstrap: str, topic: Topic, stop: asyncio.Event, out: list[tuple[bytes | None, bytes]]) -> None:
    consumer = AIOKafkaConsumer(str(topic), bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4()}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            out.extend((r.key, r.value) for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()


async def test_a_dead_hosts_old_heartbeats_delivered_again_do_not_bring_it_back(stack: Stack) -> None:
    view = ClusterView(stack.kafka_bootstrap)
    await view.start()
    stop = asyncio.Event()
    beats: list[tuple[bytes | None, bytes]] = []
    events: list[tuple[bytes | None, bytes]] = []
    readers = [asyncio.ensure_future(_records(stack.kafka_bootstrap, Topic.HEARTBEATS, stop, beats)),
               asyncio.ensure_future(_records(stack.kafka_bootstrap, Topic.HOST_EVENTS, stop, events))]
    conn = await asyncpg.connect(stack.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await wait_ready(stack, view, len(HOSTS), 2 * len(HOSTS), timeout=60)
        await asyncio.sleep(1.0)  # a few heartbeats of sh1 recorded
        stack.kill("executor-sh1")
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT state FROM hosts WHERE name='sh1'") != "down":
            assert time.monotonic() < deadline, "sh1 never went down"
            await asyncio.sleep(0.1)
        old = [(k, v) for k, v in beats if k == b"sh1" and b'"HostHeartbeat"' in v]
        assert len(old) >= 3
        for _ in range(2):  # twice, the second time in reverse order
            for key, value in old:
                await producer.send(str(Topic.HEARTBEATS), value, key=key)
            old.reverse()
        await producer.flush()
        await asyncio.sleep(3.0)  # more than the detection timeout: time to misjudge
        row = await conn.fetchrow("SELECT state, state_reason FROM hosts WHERE name='sh1'")
        assert row["state"] == "down", f"old heartbeats brought sh1 back: {dict(row)}"
        ups = [json.loads(v) for _, v in events if b'"NodeUp"' in v]
        assert not [e for e in ups if e["data"]["host"] == "sh1"], ups
        assert await conn.fetchval("SELECT state FROM hosts WHERE name='sh2'") == "up"
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
        await producer.stop()
        await conn.close()
        await view.stop()
