"""A detector restarted onto a backlog suspects nobody (regression: issue 4's bench once
left all 10,000 hosts `fencing` after the detector worked through 25 s of queued
heartbeats — it judged at the wall clock while the heartbeats of whole partitions still
waited on the broker). Real detector process, real broker (this module's own, so the
"detector" consumer group is ours alone), real PostgreSQL.

3,000 hosts heartbeat every 0.5 s (4 misses: detection timeout 2 s, room for a slow round
of this test's own producer on a loaded machine); the detector is SIGKILLed, 40 rounds
(120,000 heartbeats) are queued, the detector starts again while the hosts go on
beating; working through the backlog takes it longer than the detection timeout. No host may be
suspected; once the detector has caught up, one host stops and must be suspected (the
detector judges again)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.embedded import EmbeddedBroker, free_port
from services.common.schemas import Topic
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = 3000
QUEUED_ROUNDS = 40
INTERVAL = 0.5  # × 4 misses: detection timeout 2 s, shorter than the detector's catching up
HANDLED = re.compile(r'^evacuate_messages_handled_total\{consumer="detector",type="HostHeartbeat"\} (\S+)$', re.M)
LAG = re.compile(r"^evacuate_detector_lag_seconds (\S+)$", re.M)


def _heartbeat(host: str, seq: int) -> bytes:
    at = datetime.now(UTC).isoformat()
    return (f'{{"type":"HostHeartbeat","version":1,"id":"{uuid.uuid4()}","at":"{at}","source":"test",'
            f'"data":{{"host":"{host}","seq":{seq},"fence_driver":"manual","fence_target":""}}}}').encode()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, int]]:
    broker = EmbeddedBroker().start()
    port = free_port()
    s = Stack(tmp_path, kafka_bootstrap=broker.bootstrap, fresh_database=True, heartbeat_interval=INTERVAL,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""),
              extra_env={"EVACUATE_HEALTH_PORT": str(port), "EVACUATE_LOG_LEVEL": "WARNING",
                         "EVACUATE_MISSES_BEFORE_SUSPECT": "4"})
    try:
        s.start_infra()
        s.spawn("detector", "services.detector")
        yield s, port
    finally:
        s.stop()
        broker.stop()


async def _metric(client: httpx.AsyncClient, url: str, pattern: re.Pattern[str]) -> float:
    try:
        m = pattern.search((await client.get(url)).text)
    except httpx.HTTPError:
        return -1.0
    return float(m.group(1)) if m else -1.0


async def test_a_restarted_detector_catching_up_a_backlog_suspects_nobody(stack: tuple[Stack, int]) -> None:
    stack, port = stack
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    hosts = [f"bl{i:05d}" for i in range(HOSTS)]
    topic = str(Topic.HEARTBEATS)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, enable_idempotence=False)
    events = AIOKafkaConsumer(str(Topic.HOST_EVENTS), bootstrap_servers=stack.kafka_bootstrap,
                              group_id=f"t-{uuid.uuid4()}", auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await producer.start()
    await events.start()
    seq = 0

    silent: set[str] = set()

    async def one_round() -> None:
        nonlocal seq
        seq += 1
        futures = [await producer.send(topic, _heartbeat(h, seq), key=h.encode()) for h in hosts if h not in silent]
        await asyncio.gather(*futures)

    async def beat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await one_round()
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    conn = await asyncpg.connect(stack.database_url)
    try:
        stop = asyncio.Event()
        beating = asyncio.ensure_future(beat(stop))
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM hosts") < HOSTS:
            assert time.monotonic() < deadline, "hosts not registered"
            await asyncio.sleep(0.5)
        stop.set()
        await beating
        stack.kill("detector", signal.SIGKILL)
        for _ in range(QUEUED_ROUNDS):
            await one_round()
        stack.restart("detector")
        stop = asyncio.Event()
        beating = asyncio.ensure_future(beat(stop))
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 90
            while await _metric(client, metrics_url, HANDLED) < QUEUED_ROUNDS * HOSTS:
                assert time.monotonic() < deadline, "the detector did not work through its backlog"
                await asyncio.sleep(0.2)
            await asyncio.sleep(3.0)  # longer than the detection timeout, the hosts beating on
            not_up = await conn.fetch("SELECT name, state, state_reason FROM hosts WHERE state <> 'up' LIMIT 5")
            assert not not_up, [dict(r) for r in not_up]
            # Judging has resumed (a detector that never judged again would pass the above):
            # one host stops, and is suspected.
            silent.add(hosts[0])
            deadline = time.monotonic() + 30
            while await conn.fetchval("SELECT state FROM hosts WHERE name = $1", hosts[0]) == "up":
                assert time.monotonic() < deadline, (
                    f"{hosts[0]} stopped and was never suspected (lag {await _metric(client, metrics_url, LAG)} s)")
                await asyncio.sleep(0.2)
        stop.set()
        await beating
        seen: list[bytes] = []
        empty = 0
        while empty < 3:
            batch = await events.getmany(timeout_ms=500)
            empty = 0 if batch else empty + 1
            seen += [r.value for rs in batch.values() for r in rs]
        suspected = [v for v in seen if (b"HostSuspect" in v or b"NodeDown" in v) and hosts[0].encode() not in v]
        assert not suspected, suspected[:3]
    finally:
        await conn.close()
        await producer.stop()
        await events.stop()
