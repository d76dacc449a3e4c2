"""Logs: text by default, one JSON object per line with EVACUATE_LOG_FORMAT=json; the
consume loop's message context (message_id, evacuation_id, host) lands on every line
logged while a message is handled, and ends with it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from services.common.bus import ConsumeLoop, ConsumerSpec, Producer, ensure_topics
from services.common.embedded import EmbeddedBroker
from services.common.runtime import LOG_EVACUATION_ID, ContextFilter, JsonFormatter, TextFormatter, log_context
from services.common.schemas import Envelope, EvacuationCompleted, Message, Topic


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("services.test-log-format")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out, handler
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_service_host_and_message_context(capture: tuple) -> None:
    logger, out, handler = capture
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter("planner"))
    logger.info("before")
    with log_context("m-1", "e-1", "h1"):
        logger.info("handling %s", "NodeDown")
        LOG_EVACUATION_ID.set("e-2")  # as the planner does once it creates the evacuation
        logger.warning("planned")
    logger.info("after")
    before, handling, planned, after = lines(out)
    assert set(before) == {"time", "level", "logger", "message", "service"}
    assert before["service"] == "planner" and before["logger"] == "services.test-log-format"
    assert datetime.fromisoformat(str(before["time"])).utcoffset() is not None
    assert handling == {**handling, "message": "handling NodeDown", "level": "INFO", "message_id": "m-1",
                        "evacuation_id": "e-1", "host": "h1"}
    assert planned["evacuation_id"] == "e-2" and planned["level"] == "WARNING"
    assert "message_id" not in after and "evacuation_id" not in after and "host" not in after


def test_an_executor_logs_its_own_host_and_exceptions_stay_on_one_line(capture: tuple) -> None:
    logger, out, handler = capture
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter("executor", host="c1"))
    with log_context("m-2", None, "other-host"):
        try:
            raise ValueError("bad value 'x'")
        except ValueError:
            logger.exception("rebuild failed")
    (rec,) = lines(out)
    assert rec["host"] == "c1" and rec["message_id"] == "m-2" and "evacuation_id" not in rec
    assert "ValueError: bad value 'x'" in str(rec["exc"]) and rec["level"] == "ERROR"


def test_text_lines_name_the_message(capture: tuple) -> None:
    logger, out, handler = capture
    handler.setFormatter(TextFormatter())
    handler.addFilter(ContextFilter("planner"))
    logger.info("plain")
    with log_context("m-3", "e-3"):
        logger.info("about a message")
    plain, about = out.getvalue().splitlines()
    assert plain.endswith("INFO services.test-log-format: plain") and "[" not in plain
    assert about.endswith("about a message [message_id=m-3 evacuation_id=e-3]")


@pytest.mark.parametrize("fmt", ["json", "text", ""])
def test_a_service_process_logs_in_the_chosen_format(fmt: str) -> None:
    """The setting reaches a real service: the planner's first line, before it needs any infrastructure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVACUATE_")}
    env.update(EVACUATE_KAFKA_BOOTSTRAP="127.0.0.1:9", EVACUATE_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none")
    if fmt:
        env["EVACUATE_LOG_FORMAT"] = fmt
    proc = subprocess.Popen([sys.executable, "-m", "services.planner"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()
    if fmt == "json":
        rec = json.loads(first)
        assert rec["message"] == "starting services.planner" and rec["service"] == "planner"
    else:
        assert first.rstrip().endswith("INFO services.planner: starting services.planner"), first


def test_a_bad_format_is_refused_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVACUATE_")}
    env["EVACUATE_LOG_FORMAT"] = "xml"
    out = subprocess.run([sys.executable, "-m", "services.planner"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "EVACUATE_LOG_FORMAT='xml'" in out.stderr


async def test_the_consume_loop_tags_a_handlers_lines_with_its_message(broker: EmbeddedBroker) -> None:
    """Over the real broker: what a handler logs carries the message's id, evacuation and host."""
    await ensure_topics(broker.bootstrap)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter("test"))
    logger = logging.getLogger("services.test-bus-context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    handled = asyncio.Event()

    async def handle(env: Envelope, msg: Message) -> None:
        logger.info("handling %s", env.type)
        handled.set()

    producer = Producer(broker.bootstrap, "test-log")
    await producer.start()
    loop = ConsumeLoop(broker.bootstrap, ConsumerSpec(
        name="test-log", group=f"test-log-{uuid.uuid4()}", topics=(str(Topic.EVACUATIONS),), handler=handle,
        auto_offset_reset="latest"), producer, fetch_max_wait_ms=10)
    await loop.start()
    task = asyncio.ensure_future(loop.run())
    try:
        await loop.wait_assigned()
        env = await producer.publish(EvacuationCompleted(evacuation_id="e-log", source="h-log", status="completed",
                                                         placed=1, failed=0, seconds=1.0))
        await asyncio.wait_for(handled.wait(), timeout=30)
        logger.info("between messages")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await loop.stop()
        await producer.stop()
        logger.removeHandler(handler)
    during, after = lines(out)
    assert during == {**during, "message": "handling EvacuationCompleted", "message_id": env.id,
                      "evacuation_id": "e-log", "host": "h-log", "service": "test"}
    assert not {"message_id", "evacuation_id", "host"} & set(after)
