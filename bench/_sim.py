"""What the detector benches share: simulated host names, the HostHeartbeat they send
(encoded by hand: the producer must outpace the detector), the producer they send it
with, and what they read back from the detector's /metrics and /proc."""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime

import httpx
from aiokafka import AIOKafkaProducer

HANDLED = re.compile(r'^evacuate_messages_handled_total\{consumer="detector",type="HostHeartbeat"\} (\S+)$', re.M)


def host_name(i: int) -> str:
    return f"sim{i:05d}"


def heartbeat(host: str, seq: int, target: str) -> bytes:
    """Hosts with a fence target (a sleeping process's pid) use the `process` driver; the
    others the `manual` driver, so that a host wrongly suspected on an overloaded machine
    waits for an operator instead of starting a storm of failing fences."""
    at = datetime.now(UTC).isoformat()
    driver = "process" if target else "manual"
    return (f'{{"type":"HostHeartbeat","version":1,"id":"{uuid.uuid4()}","at":"{at}","source":"bench",'
            f'"data":{{"host":"{host}","seq":{seq},"fence_driver":"{driver}","fence_target":"{target}"}}}}').encode()


def heartbeat_producer(bootstrap: str) -> AIOKafkaProducer:
    """Batched and acked by every replica, as an executor's producer is; not started."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                            max_batch_size=256 * 1024, enable_idempotence=False)


async def handled(client: httpx.AsyncClient, port: int) -> float:
    """Heartbeats the detector on `port` has handled so far (0 before its first)."""
    r = await client.get(f"http://127.0.0.1:{port}/metrics")
    m = HANDLED.search(r.text)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
