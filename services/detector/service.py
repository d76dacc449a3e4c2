"""The detector's shell: feeds heartbeats and ticks into the pure failure detector,
carries out its effects (publish through the outbox, fence) and keeps each host's
record in PostgreSQL so a restarted detector continues where it stopped."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from services.common import metrics
from services.common.bus import ConsumerSpec, Producer, broker_watch, ensure_topics
from services.common.db import DB_TRANSIENT, audit, audit_many, close_pool, connect_pool, migrate, until_done
from services.common.outbox import CHANNEL as OUTBOX_CHANNEL
from services.common.outbox import OutboxRelay, emit
from services.common.runtime import gather_forever, require_infra, retry_start
from services.common.schemas import (
    CleanupResult,
    Envelope,
    FenceFailed,
    HostCommand,
    HostHeartbeat,
    HostIsolated,
    HostSuspect,
    Message,
    NodeDown,
    NodeUp,
    Topic,
    encode,
    wrap,
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
    Operator,
    Publish,
    RequestFence,
    StorageHeartbeat,
    Tick,
    Timings,
    blind,
    step,
    step_host,
)
from services.detector.fencing import FenceOutcome, Fencer, registry
from services.detector.intake import HeartbeatLoop
from services.detector.lag import HeardUntil, SeenHeartbeats
from services.detector.ownership import Ownership
from services.detector.storage import StorageHeartbeatScanner

log = logging.getLogger("services.detector")
SOURCE = "detector"


def timings_for(s: DetectorSettings) -> Timings:
    base = Timings.aggressive() if s.profile == "aggressive" else Timings.production()
    return replace(base, heartbeat_interval=s.heartbeat_interval, misses_before_suspect=s.misses_before_suspect,
                   storage_timeout=max(base.storage_timeout, 2.5 * s.heartbeat_interval))


class Detector:
    def __init__(self, settings: DetectorSettings) -> None:
        self.s = settings
        self.timings = timings_for(settings)
        # The host records, owned by this shell: a single-host event replaces one entry
        # (step_host), a tick goes through the pure `step` on the whole state.
        self.hosts: dict[str, HostRecord] = {}
        self.scanner = StorageHeartbeatScanner(settings.shared_storage)
        self.fence_targets: dict[str, str] = {}
        self.fencers: dict[str, Fencer] = registry(settings)
        self.effects: asyncio.Queue[tuple[Effect, dict[str, HostRecord]]] = asyncio.Queue()
        self.producer = Producer(settings.kafka_bootstrap, SOURCE)
        self.pool: asyncpg.Pool | None = None
        # Several detectors split the hosts by the partitions of evacuate.heartbeats: each
        # judges only the hosts whose partition it owns (commands and cleanup results come
        # on that same partition), loaded from PostgreSQL when the partition is assigned.
        self.owned: set[int] = set()
        self.blind: str | None = None  # why this detector hears no host (it then judges none)
        self.blind_checked = float("-inf")
        self.heard = HeardUntil()  # up to when each owned partition is read: the ticks' clock
        self.seen = SeenHeartbeats()  # duplicates and older reorders are dropped at intake
        self.lag_logged = float("-inf")
        self.gaps = metrics.HEARTBEAT_GAP
        self.heartbeats = HeartbeatLoop(self, settings.kafka_bootstrap, ConsumerSpec(
            name="detector", group="detector", topics=(str(Topic.HEARTBEATS),),
            handler=self.on_message, types=frozenset({"HostHeartbeat", "CleanupResult", "HostCommand"}),
            listener=Ownership(self),
            # The judging clock moves only when the loop goes round (lag.py): a poll waiting
            # a second for records would hold it back by up to a second on a quiet cluster.
            poll_timeout_ms=50,
        ), self.producer, settings.fetch_max_wait_ms)

    async def main(self) -> None:
        await retry_start("database", lambda: migrate(self.s.database_url))
        self.pool = await connect_pool(self.s.database_url, max_size=4)
        await retry_start("broker", lambda: ensure_topics(self.s.kafka_bootstrap))
        await retry_start("producer", self.producer.start)
        await retry_start("heartbeat consumer", self.heartbeats.start)
        relay = OutboxRelay(self.pool, self.producer, SOURCE)
        try:
            await gather_forever(self.heartbeats.run(), self.ticker(), self.apply_effects(), relay.run(),
                                 self.flush_heartbeats(), self.scan_storage(), self.count_states(),
                                 broker_watch(self.s.kafka_bootstrap, "detector").run())
        finally:
            await self.heartbeats.stop()
            await self.producer.stop()
            await close_pool(self.pool)

    @property
    def state(self) -> DetectorState:
        return DetectorState(hosts=self.hosts)

    def _watch_blindness(self, at: float) -> None:
        """Log when this detector goes blind and when it hears again (the core freezes
        judging on its own; this only tells operators, once a heartbeat interval)."""
        if at - self.blind_checked < self.timings.heartbeat_interval:
            return
        self.blind_checked = at
        why = blind(DetectorState(hosts=self.hosts), at, self.timings)
        if why is not None and self.blind is None:
            log.error("detector blind: %s", why)
        elif why is None and self.blind is not None:
            log.warning("detector hears hosts again: judging resumes")
        self.blind = why
        metrics.DETECTOR_BLIND.set(0 if why is None else 1)

    def feed(self, event: Event) -> None:
        """One event into the core. Records whose state (or fence round) changed are
        persisted with the effects; a heartbeat that changes only times costs O(1)."""
        changed: dict[str, HostRecord] = {}
        if isinstance(event, Tick):
            before = self.hosts
            new_state, effects = step(DetectorState(hosts=before), event, self.timings)
            after = new_state.hosts
            if after is not before:
                changed = {n: r for n, r in after.items() if before.get(n) is not r and _persisted(before.get(n), r)}
                self.hosts = dict(after)
        else:
            rec = self.hosts.get(event.host)
            new, effects = step_host(rec, event, self.timings)
            if new is not None and new is not rec:
                self.hosts[event.host] = new
                if _persisted(rec, new):
                    changed = {event.host: new}
        if not effects and not changed:
            return
        for eff in effects:
            self.effects.put_nowait((eff, changed))
        if changed and not effects:
            self.effects.put_nowait((LogLine(""), changed))

    def on_heartbeat(self, host: str, fence_driver: str, fence_target: str, seq: int | None = None,
                     sent: float | None = None) -> None:
        if seq is not None and sent is not None and self.seen.stale(host, seq, sent):
            metrics.STALE_HEARTBEATS.inc()
            return
        if fence_target:
            self.fence_targets[host] = fence_target
        now = time.time()
        prev = self.hosts.get(host)
        if prev is not None and prev.last_heartbeat is not None and prev.state == HostState.up:
            self.gaps.observe(now - prev.last_heartbeat)  # the silence a detection timeout must outlast
        self.feed(Heartbeat(host=host, at=now, fence_driver=fence_driver, sent=sent))

    async def on_message(self, env: Envelope, msg: Message) -> None:
        if isinstance(msg, HostHeartbeat):
            self.on_heartbeat(msg.host, msg.fence_driver, msg.fence_target, msg.seq, env.at.timestamp())
        elif isinstance(msg, CleanupResult) and not msg.errors:
            self.feed(CleanupDone(host=msg.host, at=time.time()))
        elif isinstance(msg, HostCommand):
            log.info("operator command %s for %s from %s", msg.command, msg.host, msg.requested_by)
            self.feed(Operator(host=msg.host, at=time.time(), command=msg.command))

    async def ticker(self) -> None:
        """Ticks judge at the time up to which every owned partition is read (see lag.py),
        so a detector working through a backlog suspects nobody whose heartbeats wait in it."""
        while True:
            now = time.time()
            self._watch_blindness(now)
            at = self.heard.judge_at(now)
            metrics.DETECTOR_LAG.set(now - at)
            behind = self.heard.behind(now, 2 * self.timings.heartbeat_interval)
            if behind and now - self.lag_logged >= 10.0:
                self.lag_logged = now
                log.warning("heartbeats read behind the broker (partition: seconds) %s: hosts there are not judged"
                            " until this detector has caught up", {p: round(b, 1) for p, b in behind.items()})
            self.feed(Tick(at=at))
            await asyncio.sleep(self.s.tick_interval)

    async def count_states(self) -> None:
        while True:
            counts: dict[str, int] = {}
            for rec in self.hosts.values():
                counts[rec.state] = counts.get(rec.state, 0) + 1
            for st in HostState:
                metrics.HOSTS_BY_STATE.labels(state=str(st)).set(counts.get(st, 0))
            await asyncio.sleep(1.0)

    async def scan_storage(self) -> None:
        """Feed a StorageHeartbeat (at = when seen) for each host whose heartbeat file on
        the shared storage changed since the previous scan; never for an unchanged file."""
        while True:
            try:
                renewed = await asyncio.to_thread(self.scanner.scan)
            except OSError as exc:  # shared storage unreachable: no news is no sign of life
                log.warning("storage heartbeat scan of %s failed: %r", self.scanner.dir, exc)
                renewed = []
            now = time.time()
            for host in renewed:
                if host in self.hosts:  # an unknown host registers by its bus heartbeat
                    self.feed(StorageHeartbeat(host=host, at=now))
            await asyncio.sleep(self.s.storage_scan_interval)

    async def apply_effects(self) -> None:
        """Carry out the effects in their order. Whatever is queued goes into one
        transaction (host records, then outbox rows in order), so a burst (10,000 hosts
        registering, a rack going suspect) costs a few transactions, not one per effect.
        A fence is requested once the state that asked for it is written."""
        while True:
            batch = [await self.effects.get()]
            while len(batch) < 1000 and not self.effects.empty():
                batch.append(self.effects.get_nowait())
            records: dict[str, HostRecord] = {}
            publishes: list[Publish] = []
            fences: list[RequestFence] = []
            for eff, changed in batch:
                records.update(changed)
                if isinstance(eff, LogLine):
                    if eff.text:
                        log.info(eff.text)
                elif isinstance(eff, Publish):
                    publishes.append(eff)
                elif isinstance(eff, RequestFence):
                    fences.append(eff)
            await until_done("persist host records", functools.partial(self.persist, records, publishes))
            for req in fences:
                asyncio.ensure_future(self.fence(req))

    async def persist(self, changed: dict[str, HostRecord], publishes: list[Publish] | None = None) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            if changed:
                await conn.executemany(
                    "INSERT INTO hosts (name, state, state_since, state_reason, detector, fence_driver, fence_target,"
                    " last_heartbeat) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (name) DO UPDATE SET state=$2,"
                    " state_since=$3, state_reason=$4, detector=$5, fence_driver=$6, fence_target=$7,"
                    " last_heartbeat=COALESCE($8, hosts.last_heartbeat)",
                    [(name, str(rec.state), _ts(rec.since), rec.reason, rec.to_dict(), rec.fence_driver,
                      self.fence_targets.get(name, ""), _ts(rec.last_heartbeat) if rec.last_heartbeat else None)
                     for name, rec in sorted(changed.items())],
                )
            if publishes and len(publishes) == 1:
                publish = publishes[0]
                await emit(conn, _message(publish), SOURCE)
                await audit(conn, publish.kind, publish.reason, host=publish.host)
            elif publishes:
                # A burst (a rack going suspect): the outbox rows and audit lines of the whole
                # batch in two statements and one NOTIFY, what `emit` and `audit` do one by one.
                rows = []
                for publish in publishes:
                    msg = _message(publish)
                    rows.append((str(type(msg).TOPIC), msg.key(), encode(wrap(msg, SOURCE))))
                await conn.executemany("INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3)", rows)
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
                await audit_many(conn, [(p.kind, p.reason, p.host, None, {}) for p in publishes])
            for publish in publishes or ():
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
        flushed: dict[str, float] = {}
        while True:
            await asyncio.sleep(2.0)
            names, times = [], []
            for n, r in self.hosts.items():
                if r.last_heartbeat and flushed.get(n) != r.last_heartbeat:
                    names.append(n)
                    times.append(r.last_heartbeat)
            if names:
                try:
                    await self.pool.execute(
                        "UPDATE hosts SET last_heartbeat=v.t FROM unnest($1::text[], $2::timestamptz[]) AS v(n, t)"
                        " WHERE hosts.name=v.n AND (hosts.last_heartbeat IS NULL OR hosts.last_heartbeat < v.t)",
                        names, [_ts(t) for t in times])
                except DB_TRANSIENT as exc:  # informational only: the next round writes them
                    log.warning("last-heartbeat times not written: %r", exc)
                    continue
                flushed.update(zip(names, times, strict=True))


def _persisted(before: HostRecord | None, after: HostRecord) -> bool:
    """A change worth a database write: a new host, a new state or a new fence round."""
    return before is None or before.state != after.state or before.fence_attempts != after.fence_attempts


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
