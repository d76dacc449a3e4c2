"""Two detectors at once (issue 4, item 5): the heartbeat partitions are split between
them, no host is judged twice (one NodeDown per failure, no false suspicion), and when
one detector dies the other takes its hosts over from PostgreSQL and still evacuates."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from services.common.bus import PARTITIONS
from services.common.embedded import EmbeddedBroker
from services.common.schemas import Topic
from services.detector.ownership import host_partition
from services.evacctl.demo import wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow
HOSTS = ["td1", "td2", "td3", "td4", "td5", "td6"]
PARTS = PARTITIONS[Topic.HEARTBEATS]


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("twodet")), kafka_bootstrap=broker.bootstrap, fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    s.start_infra()
    for name in ("planner", "templater"):
        s.spawn(name, f"services.{name}")
    s.spawn("detector", "services.detector")
    s.spawn("detector-2", "services.detector")
    for i, h in enumerate(HOSTS, 61):
        s.add_host(i, h, vm_count=2, shutoff=0, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    await wait_ready(stack, v, hosts=len(HOSTS), vms=2 * len(HOSTS))
    yield v
    await v.stop()


async def host_events(bootstrap: str) -> AIOKafkaConsumer:
    c = AIOKafkaConsumer(str(Topic.HOST_EVENTS), bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4()}",
                         auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await c.start()
    return c


async def drain(c: AIOKafkaConsumer, seconds: float) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for records in (await c.getmany(timeout_ms=200)).values():
            out.extend(json.loads(r.value) for r in records)
    return out


def owners(stack: Stack) -> dict[str, set[int]]:
    """Which heartbeat partitions each detector says it owns (its last log line on it)."""
    out = {}
    for name in ("detector", "detector-2"):
        lines = [line for line in (stack.workdir / "logs" / f"{name}.log").read_text().splitlines()
                 if "owning heartbeat partitions" in line]
        if lines:
            text = json.loads(lines[-1])["message"]
            out[name] = {int(x) for x in text.split("[", 1)[1].split("]", 1)[0].split(",") if x.strip()}
    return out


async def test_two_detectors_split_the_hosts_and_one_takes_over(stack: Stack, view: ClusterView) -> None:
    events = await host_events(stack.kafka_bootstrap)
    conn = await asyncpg.connect(stack.database_url)
    try:
        split = owners(stack)
        assert set(split) == {"detector", "detector-2"} and all(split.values()), split
        assert not split["detector"] & split["detector-2"], split
        # (the broker is shared with other test modules: only this module's hosts count)
        quiet = await drain(events, 4.0)
        assert not [e for e in quiet if e["type"] in ("HostSuspect", "NodeDown")
                    and e["data"]["host"] in HOSTS], quiet  # type: ignore[index]

        # A host of each detector fails: one NodeDown each, one evacuation each.
        by_owner = {name: next(h for h in HOSTS if host_partition(h, PARTS) in parts) for name, parts in split.items()}
        for h in by_owner.values():
            stack.kill(f"executor-{h}")
        seen = await drain(events, 8.0)
        for h in by_owner.values():
            downs = [e for e in seen if e["type"] == "NodeDown" and e["data"]["host"] == h]  # type: ignore[index]
            assert len(downs) == 1, f"{h}: {len(downs)} NodeDown"
        await _closed(conn, set(by_owner.values()))

        # One detector dies: the other takes its partitions and its hosts over.
        stack.kill("detector")
        deadline = time.monotonic() + 60
        while owners(stack).get("detector-2") != set(range(PARTS)):
            assert time.monotonic() < deadline, owners(stack)
            await asyncio.sleep(0.2)
        rest = [h for h in HOSTS if h not in by_owner.values() and host_partition(h, PARTS) in split["detector"]]
        assert rest, "the dead detector owned no other host"
        stack.kill(f"executor-{rest[0]}")
        await _closed(conn, {rest[0]})
        deadline = time.monotonic() + 30  # the target's report follows the result
        while not all(len(view.where(vm.uuid, {rest[0]})) == 1 for vm in stack.vms[rest[0]]):
            assert time.monotonic() < deadline, [view.where(vm.uuid, {rest[0]}) for vm in stack.vms[rest[0]]]
            await asyncio.sleep(0.1)
        seen = await drain(events, 2.0) + seen
        suspects = {e["data"]["host"] for e in seen  # type: ignore[index]
                    if e["type"] == "HostSuspect" and e["data"]["host"] in HOSTS}  # type: ignore[index]
        assert suspects <= {*by_owner.values(), rest[0]}, f"false suspicion of {suspects}"
    finally:
        await events.stop()
        await conn.close()


async def _closed(conn: asyncpg.Connection, hosts: set[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        rows = await conn.fetch("SELECT source, status FROM evacuations WHERE source = ANY($1::text[])", list(hosts))
        if {r["source"] for r in rows if r["status"] == "completed"} == hosts:
            assert len(rows) == len(hosts), [dict(r) for r in rows]
            return
        assert time.monotonic() < deadline, [dict(r) for r in rows]
        await asyncio.sleep(0.2)
