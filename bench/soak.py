"""False positives under load: many simulated hosts heartbeat through the real broker to
one detector (real PostgreSQL, aggressive profile: detection timeout = interval × misses,
no suspect grace) for a long run, optionally beside CPU hogs. No host ever stops, so every
HostSuspect, NodeDown or HostIsolated on evacuate.host-events is a false positive (the
hosts use the `manual` fence: a false suspicion fences nothing).

    .venv/bin/python bench/soak.py [--hosts 10000] [--interval 1.0] [--misses 2] [--minutes 1] [--hog 0]

Every 10 s it reads the detector's /metrics (heartbeats handled, its lag, the histogram
evacuate_heartbeat_gap_seconds of the silences between two heartbeats of one up host as
the detector read them) and prints a row; at the end a summary, with the smallest safe
detection timeout derived from the largest gap. Exit code 1 on any false positive.

The producer sends each round (one heartbeat of every host) as one burst on a fixed
schedule, so all hosts beat in step: the harder case for the detector. A round that takes
longer than the interval is the simulator's own fault, and the summary says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from _sim import HANDLED, heartbeat, heartbeat_producer, host_name  # bench/: the script's own dir
from aiokafka import AIOKafkaConsumer

from services.common.embedded import free_port
from services.common.schemas import Topic

LAG = re.compile(r"^evacuate_detector_lag_seconds (\S+)$", re.M)
GAP_BUCKET = re.compile(r'^evacuate_heartbeat_gap_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
FALSE_POSITIVES = ("HostSuspect", "NodeDown", "HostIsolated")
TICK = 0.1  # the detector's tick_interval: a silence is judged up to one tick late
SAMPLE_EVERY = 10.0
REGISTRATION_TIMEOUT = 300.0


@dataclass(frozen=True)
class Metrics:
    handled: float
    lag: float
    gaps: dict[float, float]  # cumulative count of gaps by bucket upper bound (inf: above the last)


def parse_metrics(text: str) -> Metrics:
    handled = HANDLED.search(text)
    lag = LAG.search(text)
    gaps = {float(le): float(n) for le, n in GAP_BUCKET.findall(text)}
    return Metrics(float(handled.group(1)) if handled else 0.0, float(lag.group(1)) if lag else 0.0, gaps)


def largest_gap(gaps: dict[float, float]) -> float | None:
    """Upper bound of the highest non-empty bucket (inf: above the last bound); None: no gap yet."""
    largest, below = None, 0.0
    for le in sorted(gaps):
        if gaps[le] > below:
            largest = le
        below = gaps[le]
    return largest


def gap_tail(gaps: dict[float, float], above: float) -> str:
    """Counts of the non-empty buckets whose gaps may exceed `above` (the interval)."""
    parts, below = [], 0.0
    for le in sorted(gaps):
        n = gaps[le] - below
        below = gaps[le]
        if le > above and n:
            parts.append(f"≤ {le:g} s: {n:,.0f}" if le != float("inf") else f"> 10 s: {n:,.0f}")
    return ", ".join(parts) or "none"


def fmt_gap(gap: float | None) -> str:
    if gap is None:
        return "-"
    return "> 10" if gap == float("inf") else f"≤ {gap:g}"


# --- the producer process -----------------------------------------------------------------


async def produce(args: argparse.Namespace) -> None:
    """Every host heartbeats once per --interval, round after round on a fixed schedule,
    until its stdin closes. Prints a JSON line every 10 s: heartbeats sent, the slowest
    round of the period (scheduled start to the last ack) and how many took longer than
    the interval."""
    producer = heartbeat_producer(args.bootstrap)
    await producer.start()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    topic = str(Topic.HEARTBEATS)
    hosts = [host_name(i) for i in range(args.hosts)]
    seq = sent = late = 0
    slowest = 0.0
    reported = scheduled = time.monotonic()
    try:
        while not stop.is_set():
            seq += 1
            futures = [await producer.send(topic, heartbeat(h, seq, ""), key=h.encode()) for h in hosts]
            await asyncio.gather(*futures)
            sent += len(hosts)
            took = time.monotonic() - scheduled
            slowest = max(slowest, took)
            late += took > args.interval
            scheduled = max(scheduled + args.interval, time.monotonic())  # behind: no burst of catch-up rounds
            if time.monotonic() - reported >= SAMPLE_EVERY:
                print(json.dumps({"sent": sent, "slowest": slowest, "late": late}), flush=True)
                reported, slowest, late = time.monotonic(), 0.0, 0
            await asyncio.sleep(scheduled - time.monotonic())
    finally:
        await producer.stop()


# --- the bench ------------------------------------------------------------------------------


def _higher_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(-10)


def _realtime() -> None:
    """SCHED_RR: the simulated hosts run whenever they are due, as separate machines would
    (root only; the kernel still keeps 5 % of each second for normal tasks)."""
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))


def realtime_all_threads(pid: int) -> None:
    subprocess.run(["chrt", "--all-tasks", "--rr", "--pid", "1", str(pid)], check=True, capture_output=True)


def start_hogs(n: int) -> list[subprocess.Popen[bytes]]:
    """Plain busy loops at normal priority: the load beside the detector."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)]


def stop_process(proc: subprocess.Popen[bytes], name: str, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"{name} still running {grace:g} s after SIGTERM: SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def read_metrics(client: httpx.AsyncClient, port: int) -> Metrics:
    r = await client.get(f"http://127.0.0.1:{port}/metrics")
    r.raise_for_status()
    return parse_metrics(r.text)


async def watch_events(consumer: AIOKafkaConsumer, found: list[tuple[float, str, str, str]]) -> None:
    """Every HostSuspect/NodeDown/HostIsolated (kind, host, reason) into `found`."""
    while True:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for r in records:
                env = json.loads(r.value)
                if env.get("type") in FALSE_POSITIVES:
                    data = env.get("data", {})
                    found.append((time.time(), env["type"], str(data.get("host")), str(data.get("reason"))))


async def wait_registered(stack_url: str, hosts: int, detector: subprocess.Popen[bytes]) -> float:
    """Seconds until every simulated host has its row (the detector writes a new host once)."""
    t0 = time.monotonic()
    conn = await asyncpg.connect(stack_url)
    try:
        while (n := await conn.fetchval("SELECT count(*) FROM hosts")) < hosts:
            if detector.poll() is not None:
                raise RuntimeError(f"detector exited with code {detector.returncode} during registration")
            if time.monotonic() - t0 > REGISTRATION_TIMEOUT:
                raise RuntimeError(f"only {n} of {hosts} hosts registered after {REGISTRATION_TIMEOUT:g} s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    return time.monotonic() - t0


async def soak(args: argparse.Namespace) -> int:
    from services.evacctl.stack import Stack

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    workdir = Path(tempfile.mkdtemp(prefix="evacuate-soak-"))
    port = free_port()
    stack = Stack(workdir, kafka_bootstrap="", database_url=os.environ.get("EVACUATE_DATABASE_URL", ""),
                  fresh_database=True, heartbeat_interval=args.interval, profile="aggressive",
                  extra_env={"EVACUATE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                             "EVACUATE_HEALTH_PORT": str(port),
                             "EVACUATE_HEARTBEAT_INTERVAL": str(args.interval),
                             "EVACUATE_MISSES_BEFORE_SUSPECT": str(args.misses)})
    hogs: list[subprocess.Popen[bytes]] = []
    producer: subprocess.Popen[bytes] | None = None
    consumer: AIOKafkaConsumer | None = None
    watcher: asyncio.Future[None] | None = None
    timeout = args.interval * args.misses
    try:
        await asyncio.to_thread(stack.start_infra)
        if stack.broker is not None and stack.broker.proc is not None:  # the broker stands for the network
            if args.realtime:
                realtime_all_threads(stack.broker.proc.pid)
            else:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, stack.broker.proc.pid, -10)
        detector = stack.spawn("detector", "services.detector")
        hogs = start_hogs(args.hog)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    await read_metrics(client, port)
                    break
                if detector.poll() is not None:
                    raise RuntimeError(f"detector exited with code {detector.returncode} at start;"
                                       f" see {workdir}/logs/detector.log (BENCH_KEEP=1 keeps it)")
                await asyncio.sleep(0.1)
            consumer = AIOKafkaConsumer(str(Topic.HOST_EVENTS), bootstrap_servers=stack.kafka_bootstrap,
                                        group_id=f"soak-{uuid.uuid4()}", auto_offset_reset="earliest",
                                        fetch_max_wait_ms=100)
            await consumer.start()
            found: list[tuple[float, str, str, str]] = []
            watcher = asyncio.ensure_future(watch_events(consumer, found))
            producer = subprocess.Popen(
                [sys.executable, __file__, "--produce", "--bootstrap", stack.kafka_bootstrap,
                 "--hosts", str(args.hosts), "--interval", str(args.interval)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                # The simulator stands for 10,000 machines of their own and the broker for the
                # network: on this shared machine both run at a higher priority (root only), so
                # that heartbeats are sent on time and a silence the detector sees is its own
                # doing (the detector runs at the normal priority, beside the load).
                preexec_fn=_realtime if args.realtime else _higher_priority)
            reports: list[dict[str, float]] = []
            assert producer.stdout is not None
            out = producer.stdout
            threading.Thread(target=lambda: reports.extend(json.loads(line) for line in out), daemon=True).start()
            registered = await wait_registered(stack.database_url, args.hosts, detector)
            print(f"{args.hosts:,} hosts registered in {registered:.1f} s; soaking {args.minutes:g} min at"
                  f" {args.interval:g} s × {args.misses} misses = {timeout:g} s detection timeout,"
                  f" {args.hog} CPU hog(s); simulated hosts and broker at"
                  f" {'SCHED_RR' if args.realtime else 'nice -10'}", flush=True)
            print(f"{'m:ss':>5} {'handled/s':>10} {'lag s':>6} {'largest gap s':>13} {'slowest round s':>15}"
                  f" {'false pos.':>10} {'load':>5}", flush=True)
            first = prev = await read_metrics(client, port)
            t0 = t_prev = time.monotonic()
            end = t0 + args.minutes * 60
            used_reports, max_lag = 0, first.lag
            while (now := time.monotonic()) < end:
                await asyncio.sleep(min(SAMPLE_EVERY, end - now))
                if detector.poll() is not None:
                    raise RuntimeError(f"detector exited with code {detector.returncode} during the soak")
                if producer.poll() is not None:
                    raise RuntimeError(f"producer exited with code {producer.returncode} during the soak")
                m, t = await read_metrics(client, port), time.monotonic()
                fresh, used_reports = reports[used_reports:], len(reports)
                slowest = f'{max(r["slowest"] for r in fresh):.2f}' if fresh else "-"
                max_lag = max(max_lag, m.lag)
                el = int(t - t0)
                print(f"{el // 60:>2}:{el % 60:02d} {(m.handled - prev.handled) / (t - t_prev):>10,.0f} {m.lag:>6.2f}"
                      f" {fmt_gap(largest_gap(m.gaps)):>13} {slowest:>15} {len(found):>10}"
                      f" {os.getloadavg()[0]:>5.1f}", flush=True)
                prev, t_prev = m, t
            await asyncio.sleep(timeout + 1.0)  # a suspicion from the last seconds reaches the bus
            last = await read_metrics(client, port)
            t_end = time.monotonic()
        summarize(args, found, first, last, t_end - t0, registered, max(max_lag, last.lag), reports)
        return 1 if found else 0
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if producer is not None:
            with contextlib.suppress(OSError):
                producer.stdin.close()  # type: ignore[union-attr]  # the producer stops at EOF
            stop_process(producer, "producer")
        for hog in hogs:
            hog.kill()
            hog.wait()
        if "detector" in stack.procs:
            stop_process(stack.procs["detector"], "detector")
        stack.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(args: argparse.Namespace, found: list[tuple[float, str, str, str]], first: Metrics, last: Metrics,
              seconds: float, registered: float, max_lag: float, reports: list[dict[str, float]]) -> None:
    timeout = args.interval * args.misses
    n = last.handled - first.handled
    print()
    print(f"soak: {seconds / 60:.1f} min ({seconds:.0f} s) after registering {args.hosts:,} hosts ({registered:.1f} s),"
          f" {args.hog} CPU hog(s) beside it")
    print(f"detection timeout: {args.interval:g} s × {args.misses} misses = {timeout:g} s (aggressive profile)")
    print(f"heartbeats handled: {n:,.0f} ({n / seconds:,.0f}/s; offered {args.hosts / args.interval:,.0f}/s);"
          f" detector lag at most {max_lag:.2f} s in the 10 s samples")
    print(f"false positives (HostSuspect/NodeDown/HostIsolated): {len(found)}")
    for _, kind, host, reason in found[:5]:
        print(f"  {kind} {host}: {reason}")
    if len(found) > 5:
        print(f"  ... and {len(found) - 5} more ({len({h for _, _, h, _ in found})} hosts)")
    gap = largest_gap(last.gaps)
    total = max(last.gaps.values(), default=0.0)
    print(f"largest heartbeat gap read by the detector (whole run, registration included): {fmt_gap(gap)} s"
          f" (highest non-empty bucket of evacuate_heartbeat_gap_seconds, {total:,.0f} gaps; buckets above the"
          f" interval: {gap_tail(last.gaps, args.interval)})")
    if gap is None or gap == float("inf"):
        print("smallest safe detection timeout: not derivable from the gap histogram (no gap, or one above 10 s)")
    else:
        safe = gap + TICK
        print(f"smallest safe detection timeout ≈ largest gap + one tick ({TICK:g} s) = {safe:.2f} s"
              f" (derived from the gap histogram, an upper bound by its bucket width; not found by shrinking"
              f" the timeout): at {args.interval:g} s heartbeats, misses ≥ {int(-(-safe // args.interval))}")
    print(f"detection time of a real failure ≈ timeout + the detector's lag (it judges only up to where it has"
          f" read): up to {timeout + max_lag:.2f} s in these samples")
    slowest = max((r["slowest"] for r in reports), default=float("nan"))
    late = sum(int(r["late"]) for r in reports)
    print(f"producer: slowest round {slowest:.2f} s (scheduled start to last ack; interval {args.interval:g} s)")
    if late:
        print(f"  {late} round(s) took longer than the interval: the gaps they made are the simulator's own fault"
              " (the machine could not run it in time), not the detector's")
    load = os.getloadavg()
    print(f"load average: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} ({os.cpu_count()} cores)")


def main() -> int:
    ap = argparse.ArgumentParser(description="Long run of heartbeating hosts: counts the detector's false positives")
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two heartbeats of a host")
    ap.add_argument("--misses", type=int, default=2, help="missed heartbeats before suspect")
    ap.add_argument("--minutes", type=float, default=1.0, help="length of the soak after registration")
    ap.add_argument("--hog", type=int, default=0, help="CPU-hog processes beside it (busy loops)")
    ap.add_argument("--realtime", action="store_true",
                    help="run the simulated hosts and the broker under SCHED_RR instead of nice -10 (root): on a"
                         " loaded machine their heartbeats then leave on time, and what the detector does with"
                         " them is what is measured")
    ap.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.produce:
        asyncio.run(produce(args))
        return 0
    os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
