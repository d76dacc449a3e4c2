"""The detector under load: one detector process (real broker, real PostgreSQL, aggressive
profile at a 1 s heartbeat interval: detection timeout 3 s), fed by a separate producer
process that sends HostHeartbeat for many simulated hosts, batched.

1. ceiling: the producer sends rounds of heartbeats for every host as fast as it can; the
   detector's own counter (/metrics, evacuate_messages_handled_total) gives heartbeats
   handled per second.
2. detection: every host heartbeats at 1 Hz; a few of them stop (each one's fence target
   is a sleeping process, so the `process` fence works); the delay from each one's last
   heartbeat (acked by the broker) to its NodeDown on evacuate.host-events is printed.

    .venv/bin/python bench/detector.py [--hosts 10000] [--rounds 30] [--victims 5]
    .venv/bin/python bench/detector.py --backlog [--hosts 10000] [--rounds 30]

3. --backlog: the detector's own ceiling, the producer's speed aside (see `backlog`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
from _sim import cpu_seconds, handled, heartbeat, heartbeat_producer, host_name  # bench/: the script's own dir
from aiokafka import AIOKafkaConsumer

from services.common.embedded import free_port
from services.common.schemas import Topic

# --- the producer process -----------------------------------------------------------------


async def produce(args: argparse.Namespace) -> None:
    """One process for the whole run, so that no host ever misses a beat between phases:
    --warmup rounds at 1 Hz, --rounds rounds as fast as possible (the ceiling), then
    --detect-seconds rounds at 1 Hz in which the victims stop after 3 s. Prints one JSON
    line per phase boundary."""
    producer = heartbeat_producer(args.bootstrap)
    await producer.start()
    victims = dict(v.split("=") for v in args.victim) if args.victim else {}
    last_acked: dict[str, float] = {}
    topic = str(Topic.HEARTBEATS)
    seq = 0

    def say(**kw: object) -> None:
        print(json.dumps({"t": time.time(), **kw}), flush=True)

    slowest = 0.0

    async def rounds(count: int, interval: float, stop_victims_after: float | None = None) -> int:
        nonlocal seq, slowest
        started = time.monotonic()
        sent = 0
        for _ in range(count):
            seq += 1
            round_start = time.monotonic()
            stopped = stop_victims_after is not None and round_start - started >= stop_victims_after
            futures = []
            for i in range(args.hosts):
                host = host_name(i)
                if host in victims and stopped:
                    continue
                fut = await producer.send(topic, heartbeat(host, seq, victims.get(host, "")), key=host.encode())
                if host in victims:
                    fut.add_done_callback(lambda _f, h=host: last_acked.__setitem__(h, time.time()))
                futures.append(fut)
                sent += 1
            await asyncio.gather(*futures)
            if interval:
                slowest = max(slowest, time.monotonic() - round_start)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - round_start)))
        return sent

    go = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
    try:
        sent = await rounds(args.warmup, 1.0)
        say(phase="registered", sent=sent)
        while not go.is_set():  # 1 Hz until the bench says every host is registered
            sent += await rounds(1, 1.0)
        say(phase="warmup", sent=sent)
        t0 = time.monotonic()
        sent = await rounds(args.rounds, 0.0)
        say(phase="ceiling", sent=sent, seconds=time.monotonic() - t0)
        slowest = 0.0
        sent = await rounds(args.detect_seconds, 1.0, stop_victims_after=3.0)
        say(phase="detect", sent=sent, last_acked=last_acked, slowest_round=slowest)
    finally:
        await producer.stop()


# --- the bench ------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> None:
    from services.evacctl.stack import Stack

    workdir = Path(tempfile.mkdtemp(prefix="evacuate-bench-detector-"))
    port = free_port()
    stack = Stack(workdir, fresh_database=True, heartbeat_interval=1.0, profile="aggressive",
                  extra_env={"EVACUATE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                             "EVACUATE_HEALTH_PORT": str(port),
                             "EVACUATE_MISSES_BEFORE_SUSPECT": str(args.misses)})
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(stack.start_infra)
        stack.spawn("detector", "services.detector")
        victims: dict[str, int] = {}
        for i in range(args.victims):
            p = subprocess.Popen(["sleep", "3600"], start_new_session=True)
            sleepers.append(p)
            victims[host_name(i * (args.hosts // max(1, args.victims)))] = p.pid
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(300):
                try:
                    await handled(client, port)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            boot = stack.kafka_bootstrap
            downs = AIOKafkaConsumer(str(Topic.HOST_EVENTS), bootstrap_servers=boot, group_id=f"bench-{uuid.uuid4()}",
                                     auto_offset_reset="earliest", fetch_max_wait_ms=10)
            await downs.start()
            cmd = [sys.executable, __file__, "--produce", "--bootstrap", boot, "--hosts", str(args.hosts),
                   "--warmup", str(args.warmup), "--rounds", str(args.rounds),
                   "--detect-seconds", str(args.detect_seconds)]
            for host, pid in victims.items():
                cmd += ["--victim", f"{host}={pid}"]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
            assert proc.stdout is not None and proc.stdin is not None
            phases: dict[str, dict[str, object]] = {}
            seen: dict[str, tuple[float, float, str]] = {}
            others: set[str] = set()
            samples: list[tuple[float, float, float]] = []
            pid = stack.procs["detector"].pid

            async def read_phases() -> None:
                assert proc.stdout is not None
                assert proc.stdin is not None
                async for line in proc.stdout:
                    info = json.loads(line)
                    phases[info["phase"]] = info
                    if info["phase"] == "registered":
                        # Registration writes each new host once; let that finish first.
                        conn = await asyncpg.connect(stack.database_url)
                        try:
                            while await conn.fetchval("SELECT count(*) FROM hosts") < args.hosts:
                                await asyncio.sleep(0.5)
                        finally:
                            await conn.close()
                        await asyncio.sleep(2.0)
                        proc.stdin.write(b"go\n")
                        await proc.stdin.drain()

            async def read_events() -> None:
                while True:
                    batch = await downs.getmany(timeout_ms=200)
                    for records in batch.values():
                        for r in records:
                            env = json.loads(r.value)
                            host = env["data"].get("host")
                            if env["type"] == "NodeDown" and host in victims and host not in seen:
                                at = datetime.fromisoformat(env["at"]).timestamp()
                                seen[host] = (at, time.time(), env["data"].get("fenced_by", ""))
                            elif env["type"] in ("HostSuspect", "NodeDown") and host not in victims:
                                others.add(host)

            async def sample() -> None:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        samples.append((time.time(), await handled(client, port), cpu_seconds(pid)))
                    await asyncio.sleep(0.2)

            tasks = [asyncio.ensure_future(c) for c in (read_events(), sample())]
            await read_phases()
            await proc.wait()
            deadline = time.monotonic() + 15
            while len(seen) < len(victims) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await downs.stop()

        warm = float(phases["warmup"]["sent"])  # type: ignore[arg-type]
        ceiling = float(phases["ceiling"]["sent"])  # type: ignore[arg-type]
        first = next((x for x in samples if x[1] >= warm * 0.999), samples[0])
        t_start, base, cpu_start = first
        last_s = next((x for x in samples if x[1] >= base + ceiling), samples[-1])
        t_end, done, cpu_end = last_s[0], last_s[1] - base, last_s[2]
        psec = float(phases["ceiling"]["seconds"])  # type: ignore[arg-type]
        print(f"hosts {args.hosts}: producer sent {ceiling:,.0f} heartbeats in {psec:.1f} s ({ceiling / psec:,.0f}/s)")
        print(f"detector handled {done:,.0f} of them in {t_end - t_start:.1f} s: "
              f"{done / max(t_end - t_start, 1e-9):,.0f} heartbeats/s (goal >= 20,000/s), using "
              f"{cpu_end - cpu_start:.1f} s of CPU: {done / max(cpu_end - cpu_start, 1e-9):,.0f} heartbeats per "
              f"detector CPU-second")
        print(f"machine load average now: {os.getloadavg()[0]:.1f} (2 cores; other work on the machine slows both)")
        last = phases["detect"]["last_acked"]
        assert isinstance(last, dict)
        timeout = args.misses * 1.0
        print(f"detection: timeout {timeout:.1f} s ({args.misses} missed 1 s heartbeats, no suspect grace) + process"
              f" fence; goal <= {timeout + 0.5:.1f} s; slowest 1 Hz round of the producer "
              f"{float(phases['detect']['slowest_round']):.2f} s")  # type: ignore[arg-type]
        for host in victims:
            if host not in seen:
                print(f"  {host}: no NodeDown seen")
                continue
            decided, received, by = seen[host]
            print(f"  {host}: last heartbeat -> NodeDown decided {decided - last[host]:.2f} s, "
                  f"received on the bus {received - last[host]:.2f} s (fenced by {by})")
        print(f"  other hosts suspected or down (should be 0): {len(others)}")
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        stack.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


async def backlog(args: argparse.Namespace) -> None:
    """The detector's own ceiling, whatever the producer's speed: register every host at
    1 Hz, stop the detector (SIGKILL; it commits batch by batch), queue --rounds rounds
    of heartbeats for every host on the broker, start the detector again and time how
    fast it works through the queue (from its first handled heartbeat to the last)."""
    import signal

    from services.evacctl.stack import Stack

    workdir = Path(tempfile.mkdtemp(prefix="evacuate-bench-detector-"))
    port = free_port()
    stack = Stack(workdir, fresh_database=True, heartbeat_interval=1.0, profile="aggressive",
                  extra_env={"EVACUATE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                             "EVACUATE_HEALTH_PORT": str(port)})
    try:
        await asyncio.to_thread(stack.start_infra)
        stack.spawn("detector", "services.detector")
        producer = heartbeat_producer(stack.kafka_bootstrap)
        await producer.start()
        topic = str(Topic.HEARTBEATS)
        hosts = [host_name(i) for i in range(args.hosts)]

        async def one_round(seq: int) -> None:
            futures = [await producer.send(topic, heartbeat(h, seq, ""), key=h.encode()) for h in hosts]
            await asyncio.gather(*futures)

        conn = await asyncpg.connect(stack.database_url)
        try:
            seq = 0
            while await conn.fetchval("SELECT count(*) FROM hosts") < args.hosts:
                seq += 1
                started = time.monotonic()
                await one_round(seq)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            stack.kill("detector", signal.SIGKILL)  # offsets are committed batch by batch
            t0 = time.monotonic()
            for _ in range(args.rounds):
                seq += 1
                await one_round(seq)
            queued = args.rounds * args.hosts
            print(f"hosts {args.hosts}: {queued:,} heartbeats queued in {time.monotonic() - t0:.1f} s"
                  " with the detector stopped")
            stack.restart("detector")
            pid = stack.procs["detector"].pid
            samples: list[tuple[float, float, float]] = []
            async with httpx.AsyncClient(timeout=30) as client:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        samples.append((time.time(), await handled(client, port), cpu_seconds(pid)))
                        if samples[-1][1] >= queued:
                            break
                    await asyncio.sleep(0.1)
            start = next(x for x in samples if x[1] > 0)
            end = samples[-1]
            n = end[1] - start[1]
            wall = end[0] - start[0]
            print(f"detector worked through {n:,.0f} queued heartbeats in {wall:.2f} s: {n / max(wall, 1e-9):,.0f}"
                  f" heartbeats/s (goal >= 20,000/s), {n / max(end[2] - start[2], 1e-9):,.0f} per detector"
                  f" CPU-second; load average {os.getloadavg()[0]:.1f}")
            suspects = await conn.fetchval("SELECT count(*) FROM hosts WHERE state <> 'up'")
            print(f"hosts not up afterwards (should be 0): {suspects}")
        finally:
            await conn.close()
            await producer.stop()
    finally:
        stack.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=30, help="rounds of the ceiling run")
    ap.add_argument("--victims", type=int, default=5)
    ap.add_argument("--misses", type=int, default=3, help="heartbeats missed before suspect (detection timeout)")
    ap.add_argument("--detect-seconds", type=int, default=12, help="seconds of the 1 Hz detection run")
    ap.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--warmup", type=int, default=3, help="1 Hz rounds at least before the ceiling run")
    ap.add_argument("--victim", action="append")
    ap.add_argument("--backlog", action="store_true",
                    help="measure the detector working through --rounds queued rounds (its ceiling, producer aside)")
    args = ap.parse_args()
    if args.produce:
        asyncio.run(produce(args))
    elif args.backlog:
        os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
        asyncio.run(backlog(args))
    else:
        os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
