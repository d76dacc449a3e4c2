"""The detector's shell: feeds heartbeats and ticks into the pure failure detector,
carries out its effects (publish through the outbox, fence) and keeps each host's
record in PostgreSQL so a restarted detector continues where it stopped."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import asyncpg

from services.common import metrics
from services.common.bus import ConsumeLoop, ConsumerSpec, Producer, ensure_topics
from services.common.db import audit, connect_pool, migrate
from services.common.outbox import OutboxRelay, emit
from services.common.runtime import gather_forever, require_infra, retry_start
from services.common.schemas import (
    CleanupResult,
    Envelope,
    FenceFailed,
    HostHeartbeat,
    HostIsolated,
    HostSuspect,
    Message,
    NodeDown,
    NodeUp,
    Topic,
)
from services.common.settings import DetectorSettings
from services.detector.failure_detector import (
    CleanupDone,
    DetectorState,
    Effect,
    Event,
    FenceResult,
    Heartbeat,
    HostRecord,
    HostState,
    LogLine,
    Publish,
    RequestFence,
    Tick,
    Timings,
    step,
)
from services.detector.fencing import FenceOutcome, Fencer, registry

log = logging.getLogger("services.detector")
SOURCE = "detector"


def timings_for(s: DetectorSettings) -> Timings:
    base = Timings.aggressive() if s.profile == "aggressive" else Timings.production()
    from dataclasses import replace

    return replace(base, heartbeat_interval=s.heartbeat_interval, misses_before_suspect=s.misses_before_suspect,
                   storage_timeout=max(base.storage_timeout, 2.5 * s.heartbeat_interval))


class Detector:
    def __init__(self, settings: DetectorSettings) -> None:
        self.s = settings
        self.timings = timings_for(settings)
        self.state = DetectorState()
        self.fence_targets: dict[str, str] = {}
        self.fencers: dict[str, Fencer] = registry(settings)
        self.effects: asyncio.Queue[tuple[Effect, dict[str, HostRecord]]] = asyncio.Queue()
        self.producer = Producer(settings.kafka_bootstrap, SOURCE)
        self.pool: asyncpg.Pool | None = None
        self.heartbeats = ConsumeLoop(settings.kafka_bootstrap, ConsumerSpec(
            name="detector", group="detector", topics=(str(Topic.HEARTBEATS), str(Topic.RESULTS)),
            handler=self.on_message, types=frozenset({"HostHeartbeat", "CleanupResult"}),
        ), self.producer, settings.fetch_max_wait_ms)

    async def main(self) -> None:
        await retry_start("database", lambda: migrate(self.s.database_url))
        self.pool = await connect_pool(self.s.database_url, max_size=4)
        await self.load()
        await retry_start("broker", lambda: ensure_topics(self.s.kafka_bootstrap))
        await retry_start("producer", self.producer.start)
        await retry_start("heartbeat consumer", self.heartbeats.start)
        relay = OutboxRelay(self.pool, self.producer, SOURCE)
        try:
            await gather_forever(self.heartbeats.run(), self.ticker(), self.apply_effects(), relay.run(),
                                 self.flush_heartbeats())
        finally:
            await self.heartbeats.stop()
            await self.producer.stop()
            await self.pool.close()

    async def load(self) -> None:
        """Resume from PostgreSQL. Hosts that were up get a fresh window to heartbeat:
        the time this detector was away is not their silence."""
        assert self.pool is not None
        now = time.time()
        hosts = {}
        for r in await self.pool.fetch("SELECT name, detector, fence_target FROM hosts WHERE detector IS NOT NULL"):
            rec = HostRecord.from_dict(r["detector"])
            if rec.state in (HostState.up, HostState.suspect):
                from dataclasses import replace

                rec = replace(rec, last_heartbeat=now)
            hosts[r["name"]] = rec
            self.fence_targets[r["name"]] = r["fence_target"]
        self.state = DetectorState(hosts=hosts)
        log.info("resumed %d hosts from the database", len(hosts))

    def feed(self, event: Event) -> None:
        before = self.state.hosts
        self.state, effects = step(self.state, event, self.timings)
        after = self.state.hosts
        names = after.keys() if isinstance(event, Tick) else [event.host]
        changed = {n: after[n] for n in names if n in after and (
            before.get(n) is None or before[n].state != after[n].state
            or before[n].fence_attempts != after[n].fence_attempts)}
        for eff in effects:
            self.effects.put_nowait((eff, changed))
        if changed and not effects:
            self.effects.put_nowait((LogLine(""), changed))

    async def on_message(self, env: Envelope, msg: Message) -> None:
        if isinstance(msg, HostHeartbeat):
            if msg.fence_target:
                self.fence_targets[msg.host] = msg.fence_target
            self.feed(Heartbeat(host=msg.host, at=time.time(), fence_driver=msg.fence_driver))
        elif isinstance(msg, CleanupResult) and not msg.errors:
            self.feed(CleanupDone(host=msg.host, at=time.time()))

    async def ticker(self) -> None:
        while True:
            self.feed(Tick(at=time.time()))
            counts: dict[str, int] = {}
            for rec in self.state.hosts.values():
                counts[rec.state] = counts.get(rec.state, 0) + 1
            for st in HostState:
                metrics.HOSTS_BY_STATE.labels(state=str(st)).set(counts.get(st, 0))
            await asyncio.sleep(self.s.tick_interval)

    async def apply_effects(self) -> None:
        while True:
            eff, changed = await self.effects.get()
            if isinstance(eff, LogLine):
                if eff.text:
                    log.info(eff.text)
                await self.persist(changed)
            elif isinstance(eff, Publish):
                await self.persist(changed, eff)
            elif isinstance(eff, RequestFence):
                asyncio.ensure_future(self.fence(eff))

    async def persist(self, changed: dict[str, HostRecord], publish: Publish | None = None) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            for name, rec in sorted(changed.items()):
                await conn.execute(
                    "INSERT INTO hosts (name, state, state_since, state_reason, detector, fence_driver, fence_target,"
                    " last_heartbeat) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (name) DO UPDATE SET state=$2,"
                    " state_since=$3, state_reason=$4, detector=$5, fence_driver=$6, fence_target=$7,"
                    " last_heartbeat=COALESCE($8, hosts.last_heartbeat)",
                    name, str(rec.state), _ts(rec.since), rec.reason, rec.to_dict(), rec.fence_driver,
                    self.fence_targets.get(name, ""), _ts(rec.last_heartbeat) if rec.last_heartbeat else None,
                )
            if publish is not None:
                msg = _message(publish)
                await emit(conn, msg, SOURCE)
                await audit(conn, publish.kind, publish.reason, host=publish.host)
                log.info("%s %s: %s", publish.kind, publish.host, publish.reason)

    async def fence(self, req: RequestFence) -> None:
        fencer = self.fencers.get(req.driver)
        if fencer is None:
            if req.driver == "manual":
                log.warning("host %s needs a manual fence: confirm it is off (evacctl host confirm-off)", req.host)
                return
            outcome = FenceOutcome(False, f"no fence driver {req.driver!r} in this detector")
        else:
            try:
                outcome = await fencer.fence(req.host, self.fence_targets.get(req.host, ""))
            except Exception as exc:  # noqa: BLE001 - a broken driver is a failed fence, not a dead detector
                outcome = FenceOutcome(False, f"{req.driver} fence raised {exc!r}")
        metrics.FENCE_ATTEMPTS.labels(driver=req.driver, ok=str(outcome.ok).lower()).inc()
        log.info("fence %s via %s (attempt %d): %s", req.host, req.driver, req.attempt, outcome.reason)
        self.feed(FenceResult(host=req.host, at=time.time(), ok=outcome.ok, reason=outcome.reason,
                              attempt=req.attempt))

    async def flush_heartbeats(self) -> None:
        """Last-heartbeat times for operators, written in one batch every few seconds
        (never one write per heartbeat)."""
        assert self.pool is not None
        while True:
            await asyncio.sleep(2.0)
            rows = [(n, _ts(r.last_heartbeat)) for n, r in self.state.hosts.items() if r.last_heartbeat]
            if rows:
                await self.pool.executemany(
                    "UPDATE hosts SET last_heartbeat=$2 WHERE name=$1 AND"
                    " (last_heartbeat IS NULL OR last_heartbeat < $2)", rows)


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _message(p: Publish) -> Message:
    if p.kind == "NodeDown":
        return NodeDown(host=p.host, reason=p.reason, fenced_by=p.fenced_by or "unknown")
    if p.kind == "FenceFailed":
        return FenceFailed(host=p.host, reason=p.reason, attempt=p.attempt)
    cls = {"HostSuspect": HostSuspect, "HostIsolated": HostIsolated, "NodeUp": NodeUp}[p.kind]
    return cls(host=p.host, reason=p.reason)


async def amain(settings: DetectorSettings) -> None:
    require_infra(settings)
    await Detector(settings).main()
