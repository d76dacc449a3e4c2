"""The detector's intake: its consume loop, with a fast path for well-formed heartbeats
(nearly all of its traffic) and the report of how far each heartbeat partition is read."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from services.common import metrics
from services.common.bus import ConsumeLoop
from services.common.schemas import HostHeartbeat, Topic

if TYPE_CHECKING:
    from services.detector.service import Detector


_HEARTBEAT_FIELDS = frozenset({"host", "seq", "fence_driver", "fence_target", "storage_ok"})
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ENVELOPE_FIELDS = frozenset({"type", "version", "id", "at", "source", "data"})


def fast_heartbeat(raw: bytes | None) -> tuple[str, str, str, int, float] | None:
    """(host, fence_driver, fence_target, seq, sent) of a well-formed HostHeartbeat v1 (sent:
    the envelope's time, as a POSIX timestamp), checked by
    hand against its schema; None for anything else, which then takes the full path
    (pydantic decode, dead letter with the reason). Heartbeats are nearly all the
    detector's traffic, and the full decode costs more than the rest of their handling."""
    if raw is None or b'"HostHeartbeat"' not in raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if type(obj) is not dict or obj.keys() != _ENVELOPE_FIELDS or obj["type"] != "HostHeartbeat":
        return None
    data, at, ident = obj["data"], obj["at"], obj["id"]
    if (type(obj["version"]) is not int or obj["version"] != HostHeartbeat.VERSION or type(obj["source"]) is not str
            or type(at) is not str or "T" not in at or type(ident) is not str or type(data) is not dict
            or not data.keys() <= _HEARTBEAT_FIELDS):
        return None
    host, seq = data.get("host"), data.get("seq")
    driver, target = data.get("fence_driver", "process"), data.get("fence_target", "")
    if (type(host) is not str or type(seq) is not int or type(driver) is not str or type(target) is not str
            or type(data.get("storage_ok", True)) is not bool):
        return None
    try:
        if not _CANONICAL_UUID.fullmatch(ident):
            uuid.UUID(ident)  # what the schema accepts, in any of its spellings
        sent = datetime.fromisoformat(at)
        if sent.tzinfo is None:
            return None  # the schema's timestamps are aware: the full path says why not
    except ValueError:
        return None
    return host, driver, target, seq, sent.timestamp()


class HeartbeatLoop(ConsumeLoop):
    """The detector's consume loop: well-formed heartbeats go straight to the core;
    everything else (other types, anything malformed) takes ConsumeLoop's full path."""

    def __init__(self, detector: Detector, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.detector = detector
        self.handled = metrics.HANDLED.labels(consumer="detector", type="HostHeartbeat")
        self.since_yield = 0

    async def _handle(self, record: ConsumerRecord) -> None:
        hb = fast_heartbeat(record.value) if record.topic == str(Topic.HEARTBEATS) else None
        if hb is None:
            await super()._handle(record)
            return
        try:
            self.detector.on_heartbeat(*hb)
        except Exception:  # noqa: BLE001 - the full path retries, logs and dead-letters it
            await super()._handle(record)
            return
        self.handled.inc()
        self.since_yield += 1
        if self.since_yield >= 256:
            # A fetched batch holds thousands of heartbeats and handling one never waits:
            # let the ticker, the effects and the relay run in between.
            self.since_yield = 0
            await asyncio.sleep(0)


    async def _fetched(self) -> None:
        """Tell the detector which heartbeat partitions are read up to their last fetch."""
        heard = self.detector.heard
        topic = str(Topic.HEARTBEATS)
        for tp in self.consumer.assignment():
            if tp.topic != topic:
                continue
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 0.1)
                polled = self.consumer.last_poll_timestamp(tp)
            except (TimeoutError, AssertionError, KafkaError):  # a rebalance or reset under way: next batch
                continue
            heard.fetched(tp.partition, position, self.consumer.highwater(tp), polled / 1000 if polled else None)
