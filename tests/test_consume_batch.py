"""ConsumeLoop's batch path on the real broker: consecutive records of the batch types go
to the batch handler together, in order; when the batch handler fails the records are
handled one by one, so a poison message is dead-lettered with its reason and the rest
are handled."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer

from services.common.bus import ConsumeLoop, ConsumerSpec, Producer, ensure_topics
from services.common.embedded import EmbeddedBroker
from services.common.schemas import Envelope, EvacuationCompleted, Message, Topic


def _done(evacuation_id: str, n: int) -> EvacuationCompleted:
    return EvacuationCompleted(evacuation_id=evacuation_id, source="h-batch", status="completed", placed=n, failed=0,
                               seconds=0.1)


async def _consume(broker: EmbeddedBroker, messages: list[EvacuationCompleted], poison: int | None
                   ) -> tuple[list[list[int]], list[int], list[dict[str, object]]]:
    """Publish the messages (one key: one partition, in order), then consume them from the
    start with a batch handler; returns (batches, one-by-one calls, dead letters)."""
    await ensure_topics(broker.bootstrap)
    producer = Producer(broker.bootstrap, "test-batch")
    await producer.start()
    batches: list[list[int]] = []
    singles: list[int] = []
    total = len(messages)
    key = messages[0].evacuation_id
    seen = asyncio.Event()

    def check() -> None:
        if len({n for b in batches for n in b} | set(singles)) >= total - (0 if poison is None else 1):
            seen.set()

    async def one(env: Envelope, msg: Message) -> None:
        assert isinstance(msg, EvacuationCompleted)
        if msg.evacuation_id != key:
            return  # another test's, on the session's broker
        if msg.placed == poison:
            raise ValueError("poison")
        singles.append(msg.placed)
        check()

    async def many(batch: list[tuple[Envelope, Message]]) -> None:
        ours = [m.placed for _, m in batch if isinstance(m, EvacuationCompleted) and m.evacuation_id == key]
        if poison in ours:
            raise ValueError("a poison message in the batch")
        batches.append(ours)
        check()

    group = f"test-batch-{uuid.uuid4()}"
    loop = ConsumeLoop(broker.bootstrap, ConsumerSpec(
        name="test-batch", group=group, topics=(str(Topic.EVACUATIONS),), handler=one,
        types=frozenset({"EvacuationCompleted"}), batch_types=frozenset({"EvacuationCompleted"}),
        batch_handler=many, max_handler_attempts=2), producer, fetch_max_wait_ms=10)
    letters = AIOKafkaConsumer(str(Topic.DEAD_LETTER), bootstrap_servers=broker.bootstrap,
                               group_id=f"{group}-dl", auto_offset_reset="latest", fetch_max_wait_ms=10)
    await letters.start()
    await asyncio.sleep(0.5)
    for m in messages:
        await producer.publish(m)
    await loop.start()
    task = asyncio.ensure_future(loop.run())
    dead: list[dict[str, object]] = []
    try:
        await asyncio.wait_for(seen.wait(), timeout=30)
        if poison is not None:
            async with asyncio.timeout(15):
                while not dead:
                    for records in (await letters.getmany(timeout_ms=200)).values():
                        dead += [json.loads(r.value)["data"] for r in records]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loop.stop()
        await letters.stop()
        await producer.stop()
    return batches, singles, dead


async def test_consecutive_records_reach_the_batch_handler_together_in_order(broker: EmbeddedBroker) -> None:
    key = f"e-{uuid.uuid4()}"
    batches, singles, _ = await _consume(broker, [_done(key, n) for n in range(40)], None)
    # At least once (a group rebalance may deliver records again), each batch in order.
    assert set(n for b in batches for n in b) | set(singles) == set(range(40))
    assert all(b == sorted(b) for b in batches)
    assert max(map(len, batches)) > 1  # 40 records published before the consumer started


async def test_a_failing_batch_is_handled_one_by_one_and_the_poison_dead_lettered(broker: EmbeddedBroker) -> None:
    key = f"e-{uuid.uuid4()}"
    messages = [_done(key, n) for n in range(10)]
    messages.insert(5, _done(key, 99))  # the poison: same key, so the same partition, amid the others
    batches, singles, dead = await _consume(broker, messages, 99)
    assert set(n for b in batches for n in b) | set(singles) == set(range(10))
    assert singles  # the failed batch's records went one by one
    assert len(dead) == 1 and dead[0]["consumer"] == "test-batch"
    assert "handler failed 2 times" in str(dead[0]["reason"]) and '"placed":99' in str(dead[0]["original"])
