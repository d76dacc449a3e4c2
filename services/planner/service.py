"""The planner: keeps the inventory, turns NodeDown / EvacuationRequested into one
EvacuationPlan, follows the RebuildResults (retrying failures on another host) and
closes the evacuation. Every handler does its SQL and writes its outgoing messages to
the outbox in one transaction, and is idempotent by message id."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.common import metrics
from services.common.bus import ConsumeLoop, ConsumerSpec, Producer, broker_watch, ensure_topics
from services.common.db import (
    already_processed,
    audit,
    audit_many,
    close_pool,
    connect_pool,
    migrate,
    newly_processed,
)
from services.common.errors import BadMessage
from services.common.outbox import OutboxRelay, emit
from services.common.runtime import LOG_EVACUATION_ID, gather_forever, require_infra, retry_start
from services.common.schemas import (
    Assignment,
    CleanupOrder,
    Envelope,
    EvacuationCompleted,
    EvacuationPlan,
    EvacuationRequested,
    InstanceReport,
    Message,
    NodeDown,
    NodeUp,
    PowerState,
    RebuildResult,
    Topic,
)
from services.common.settings import PlannerSettings
from services.planner import resume, store
from services.planner.inventory import SeenDomains, record_report
from services.planner.liveness import HeardHosts, HeardLoop, choose
from services.planner.placement import AssignmentStatus, Policy, plan

log = logging.getLogger("services.planner")
SOURCE = "planner"
FINAL = ("done", "failed", "no_capacity", "not_evacuable", "ha_off")


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadMessage(f"{field} {value!r} is not a UUID") from None


def order_id(item_id: str, attempt: int) -> str:
    return str(uuid.uuid5(uuid.UUID(item_id), f"attempt-{attempt}"))


class Planner:
    def __init__(self, settings: PlannerSettings) -> None:
        self.s = settings
        self.producer = Producer(settings.kafka_bootstrap, SOURCE)
        self.pool: asyncpg.Pool | None = None
        self.seen = SeenDomains()
        self.heard = HeardHosts()
        self.inventory = HeardLoop(self.heard, settings.kafka_bootstrap, ConsumerSpec(
            name="planner-inventory", group="planner-inventory", topics=(str(Topic.HEARTBEATS),),
            handler=self.on_report, types=frozenset({"InstanceReport"}), fetch_max_wait_ms=100,
        ), self.producer, settings.fetch_max_wait_ms)
        self.events = ConsumeLoop(settings.kafka_bootstrap, ConsumerSpec(
            name="planner", group="planner",
            topics=(str(Topic.HOST_EVENTS), str(Topic.PLANS), str(Topic.RESULTS)),
            handler=self.on_event,
            types=frozenset({"NodeDown", "NodeUp", "EvacuationRequested", "RebuildResult"}),
            batch_types=frozenset({"RebuildResult"}), batch_handler=self.on_results,
        ), self.producer, settings.fetch_max_wait_ms)

    async def main(self) -> None:
        await retry_start("database", lambda: migrate(self.s.database_url))
        self.pool = await connect_pool(self.s.database_url, max_size=6)
        await retry_start("broker", lambda: ensure_topics(self.s.kafka_bootstrap))
        await retry_start("producer", self.producer.start)
        await retry_start("inventory consumer", self.inventory.start)
        await retry_start("event consumer", self.events.start)
        await resume.reconcile(self)
        relay = OutboxRelay(self.pool, self.producer, SOURCE)
        try:
            watch = broker_watch(self.s.kafka_bootstrap, "planner", functools.partial(resume.reconcile, self))
            await gather_forever(self.inventory.run(), self.events.run(), relay.run(), resume.sweep_timeouts(self),
                                 watch.run())
        finally:
            await self.events.stop()
            await self.inventory.stop()
            await self.producer.stop()
            await close_pool(self.pool)

    # --- inventory ------------------------------------------------------------------

    def late(self, source: str) -> frozenset[str]:
        return self.heard.late(self.s.heartbeat_interval) - {source}

    async def on_report(self, env: Envelope, msg: Message) -> None:
        assert isinstance(msg, InstanceReport) and self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            await record_report(conn, msg, env.at, self.seen)

    # --- evacuations ----------------------------------------------------------------

    async def on_event(self, env: Envelope, msg: Message) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            if await already_processed(conn, SOURCE, env.id):
                return
            if isinstance(msg, NodeDown):
                await self.retry_orders_to(conn, msg.host)
                if await store.down_episode_handled(conn, msg.host):
                    await audit(conn, "evacuation-skipped", f"NodeDown for {msg.host}: this failure is already being"
                                " handled (its evacuation was started by a reconcile)", host=msg.host)
                    return
                await self.start_evacuation(conn, msg.host, "NodeDown", env.id, None, (),
                                            f"NodeDown: {msg.reason}")
            elif isinstance(msg, EvacuationRequested):
                await self.start_evacuation(conn, msg.host, "manual", env.id, msg.target, msg.instances,
                                            f"requested by {msg.requested_by}", msg.leave_stopped)
            elif isinstance(msg, RebuildResult):
                await self.on_result(conn, msg)
            elif isinstance(msg, NodeUp):
                await self.on_node_up(conn, msg.host)

    async def on_node_up(self, conn: asyncpg.Connection, host: str) -> None:
        """A host came back: its copies of the VMs that were evacuated away are stale, and
        so is any copy of a VM it was a target for and that was then placed elsewhere (it
        went down mid-rebuild). Its executor destroys and undefines them (never their
        disks) and never starts them."""
        rows = await conn.fetch(
            "SELECT DISTINCT it.instance_uuid FROM evacuation_items it JOIN instances i ON i.uuid = it.instance_uuid"
            " WHERE (it.source = $1 OR $1 = ANY(it.excluded)) AND it.status IN ('done', 'pending') AND i.host <> $1"
            " ORDER BY 1", host)
        stale = tuple(str(r["instance_uuid"]) for r in rows)
        await emit(conn, CleanupOrder(host=host, instances=stale), SOURCE)
        await audit(conn, "cleanup-ordered", f"{host} returned: destroy {len(stale)} stale copies", host=host)
        log.info("host %s returned: cleanup of %d stale domains ordered", host, len(stale))

    async def retry_orders_to(self, conn: asyncpg.Connection, host: str) -> None:
        """A host that fails while rebuilds of another evacuation are in flight to it (two
        hosts failing together: the first plan may use the second before it is declared
        down) will never answer them: place them again at once, excluding it, rather than
        after the result timeout. It is fenced, so no copy it may have started still runs.
        An item locked by a result being handled or by the timeout sweep is theirs to retry
        (they lock the item before planning: waiting for it here would deadlock)."""
        await store.lock_planning(conn)
        for item in await conn.fetch(
            "SELECT * FROM evacuation_items WHERE status='pending' AND target=$1 ORDER BY created_at, instance_name"
            " FOR UPDATE SKIP LOCKED", host,
        ):
            await self.retry_or_fail(conn, item, host, f"target {host} went down before it reported a result", [])
            await self.maybe_close(conn, item["evacuation_id"])

    async def start_evacuation(self, conn: asyncpg.Connection, source: str, trigger: str, trigger_id: str,
                               target: str | None, only: tuple[str, ...], why: str,
                               leave_stopped: bool = False) -> None:
        await store.lock_planning(conn)
        if await store.open_evacuation(conn, source) is not None:
            await audit(conn, "evacuation-skipped", f"{trigger} for {source}: an evacuation is already running",
                        host=source)
            return
        evac_id = uuid.uuid4()
        LOG_EVACUATION_ID.set(str(evac_id))  # the rest of this message's lines are about it (reset by the loop)
        host = await conn.fetchrow("SELECT state FROM hosts WHERE name = $1", source)
        refused = None
        if host is None:
            refused = f"unknown host {source!r}"
        elif trigger == "manual" and host["state"] not in ("down", "fencing", "isolated"):
            refused = (f"host {source!r} is {host['state']}: its VMs may still run there; fence it or "
                       "confirm it is off before evacuating")
        records = await store.load_instances(conn, source, only) if refused is None else []
        hosts, methods = await store.load_hosts(conn)
        policy = Policy(recovery=methods, target=target)
        # Instances an operator names are moved even with HA off: HA means "automatically".
        infos = [replace(store.instance_info(r), ha=True) if only else store.instance_info(r) for r in records]
        groups = await store.load_groups(conn)
        result = None if refused is not None else choose(
            self.late(source), hosts, lambda hs: plan([source], infos, hs, groups, policy))
        if result is not None and result.refused:
            refused = result.refused
        await conn.execute(
            "INSERT INTO evacuations (id, source, trigger, trigger_id, status, reason, target, leave_stopped)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            evac_id, source, trigger, uuid.UUID(trigger_id), "refused" if refused else "running",
            refused or why, target, leave_stopped,
        )
        if refused or result is None:
            await audit(conn, "evacuation-refused", refused or "", host=source, evacuation_id=evac_id)
            await emit(conn, EvacuationCompleted(evacuation_id=str(evac_id), source=source, status="failed",
                                                 placed=0, failed=0, seconds=0.0), SOURCE)
            log.warning("evacuation of %s refused: %s", source, refused)
            return
        await self.take_reserved(conn, result.reserved_taken, evac_id)
        by_uuid = {str(r["uuid"]): r for r in records}
        assignments, items, audits = [], [], []
        for a in result.assignments:
            item_id = str(uuid.uuid4())
            placed = a.status is AssignmentStatus.PLACED
            status = "pending" if placed else str(a.status)
            items.append((uuid.UUID(item_id), evac_id, uuid.UUID(a.instance_uuid), a.instance_name, source, a.target,
                          1 if placed else 0, status, a.reason,
                          uuid.UUID(order_id(item_id, 1)) if placed else None, placed))
            audits.append(("placement", f"{a.instance_name}: {a.status}: {a.reason}", source, evac_id,
                           {"instance": a.instance_uuid, "target": a.target}))
            if placed and a.target is not None:
                assignments.append(self._assignment(by_uuid[a.instance_uuid], item_id, a.target, 1, leave_stopped))
        # One statement each for the items and their audit lines (a 1,000-VM host: two round trips, not 2,000).
        await conn.executemany(
            "INSERT INTO evacuation_items (id, evacuation_id, instance_uuid, instance_name, source, target,"
            " attempt, status, reason, order_id, ordered_at, finished_at)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10, CASE WHEN $11 THEN now() END,"
            " CASE WHEN $11 THEN NULL ELSE now() END)", items)
        await audit_many(conn, audits)
        log.info("evacuation %s of %s: %d to rebuild, %d not placed", evac_id, source, len(assignments),
                 len(result.assignments) - len(assignments))
        if assignments:
            await store.emit_plans(conn, str(evac_id), source, assignments)
        else:
            await self.maybe_close(conn, evac_id)

    async def take_reserved(self, conn: asyncpg.Connection, hosts: tuple[str, ...], evac_id: Any) -> None:
        """A reserved (failover) host that received instances leaves the reserved pool,
        as in Masakari: it is now an ordinary host with VMs on it."""
        for name in hosts:
            await conn.execute("UPDATE hosts SET reserved = false WHERE name = $1", name)
            await audit(conn, "reserved-host-taken", f"{name} received evacuated instances: no longer reserved",
                        host=name, evacuation_id=evac_id)

    def _assignment(self, inst: asyncpg.Record, item_id: str, target: str, attempt: int,
                    leave_stopped: bool) -> Assignment:
        power = PowerState.SHUTOFF if leave_stopped else PowerState(inst["power_state"])
        return Assignment(
            item_id=item_id, instance_uuid=str(inst["uuid"]), instance_name=inst["name"], target=target,
            attempt=attempt, xml=inst["xml"], power_state=power,
            template=inst["template"], metadata=dict(inst["metadata"] or {}),
        )

    async def on_results(self, batch: list[tuple[Envelope, Message]]) -> None:
        """Consecutive RebuildResults in one transaction: a rack of rebuilds finishing
        together costs a few statements, not a transaction each (the consume loop falls
        back to one by one if this raises)."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await newly_processed(conn, SOURCE, [env.id for env, _ in batch])
            results = []
            for env, msg in batch:
                if env.id in fresh and isinstance(msg, RebuildResult):
                    fresh.discard(env.id)  # the same message twice in one batch counts once
                    results.append(msg)
            await self.on_result(conn, *results)

    async def on_result(self, conn: asyncpg.Connection, *results: RebuildResult) -> None:
        ids = [_uuid(res.item_id, "item_id") for res in results]
        items = {r["id"]: r for r in await conn.fetch(
            "SELECT * FROM evacuation_items WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids)}
        done, moved, lines, evacuations = [], [], [], set()
        for res, item_id in zip(results, ids, strict=True):
            item = items.pop(item_id, None)  # popped: a second result for one item is a duplicate
            if item is None or item["status"] != "pending" or item["attempt"] != res.attempt:
                continue  # a duplicate or a result of an attempt we already gave up on
            evacuations.add(item["evacuation_id"])
            steps = [s.model_dump() for s in res.steps]
            if res.ok:
                done.append((item["id"], str(res.power_state), steps, f"; rebuilt on {res.host}"))
                moved.append((item["instance_uuid"], res.host, str(res.power_state)))
                lines.append(("rebuild-done", f"{item['instance_name']} rebuilt on {res.host}, {res.power_state}",
                              res.host, item["evacuation_id"], {"steps": steps}))
            else:
                await self.retry_or_fail(conn, item, res.host, res.error or "rebuild failed", steps, res.retryable)
        if done:
            await conn.executemany(
                "UPDATE evacuation_items SET status='done', power_state=$2, steps=$3, finished_at=now(),"
                " reason = reason || $4 WHERE id=$1", done)
            await conn.executemany(
                "UPDATE instances SET host=$2, power_state=$3, present=true, reported_at=now() WHERE uuid=$1", moved)
            await audit_many(conn, lines)
        for evac_id in sorted(evacuations):
            await self.maybe_close(conn, evac_id)

    async def retry_or_fail(self, conn: asyncpg.Connection, item: asyncpg.Record, host: str | None,
                            error: str, steps: list[dict[str, Any]], retryable: bool = True) -> None:
        excluded = list(item["excluded"]) + ([host] if host else [])
        await audit(conn, "rebuild-failed", f"{item['instance_name']} on {host}: {error}", host=host,
                    evacuation_id=item["evacuation_id"], data={"steps": steps, "attempt": item["attempt"]})
        if item["attempt"] >= self.s.max_attempts or not retryable:
            await conn.execute(
                "UPDATE evacuation_items SET status='failed', reason=$2, steps=$3, excluded=$4, finished_at=now()"
                " WHERE id=$1", item["id"], f"gave up after attempt {item['attempt']}: {error}", steps, excluded,
            )
            return
        await store.lock_planning(conn)
        inst = await conn.fetchrow("SELECT * FROM instances WHERE uuid=$1", item["instance_uuid"])
        hosts, methods = await store.load_hosts(conn)
        evac = await conn.fetchrow("SELECT trigger, leave_stopped FROM evacuations WHERE id=$1", item["evacuation_id"])
        info = store.instance_info(inst)
        if evac["trigger"] == "manual":  # an operator's evacuation moves what it placed, HA or not
            info = replace(info, ha=True)
        groups = await store.load_groups(conn)
        again = choose(self.late(info.host), hosts, lambda hs: plan(
            [info.host], [info], hs, groups, Policy(recovery=methods, exclude={info.uuid: frozenset(excluded)})))
        a = again.assignments[0] if again.assignments else None
        if a is None or a.status is not AssignmentStatus.PLACED or a.target is None:
            why = again.refused or (a.reason if a else "no assignment")
            await conn.execute(
                "UPDATE evacuation_items SET status='failed', reason=$2, steps=$3, excluded=$4, finished_at=now()"
                " WHERE id=$1", item["id"], f"{error}; no other host: {why}", steps, excluded,
            )
            return
        await self.take_reserved(conn, again.reserved_taken, item["evacuation_id"])
        attempt = item["attempt"] + 1
        item_id = str(item["id"])
        await conn.execute(
            "UPDATE evacuation_items SET target=$2, attempt=$3, excluded=$4, steps=$5, order_id=$6, ordered_at=now(),"
            " reason=$7 WHERE id=$1",
            item["id"], a.target, attempt, excluded, steps, uuid.UUID(order_id(item_id, attempt)),
            f"attempt {attempt}: {a.reason} (after {host or 'an unknown host'} failed: {error})",
        )
        await emit(conn, EvacuationPlan(evacuation_id=str(item["evacuation_id"]), source=item["source"], assignments=(
            self._assignment(inst, item_id, a.target, attempt, evac["leave_stopped"]),)), SOURCE)

    async def maybe_close(self, conn: asyncpg.Connection, evac_id: Any) -> None:
        evac = await conn.fetchrow("SELECT * FROM evacuations WHERE id=$1 FOR UPDATE", evac_id)
        if evac is None or evac["status"] != "running":
            return
        counts = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) n FROM evacuation_items WHERE evacuation_id=$1 GROUP BY status", evac_id)}
        if counts.get("pending"):
            return
        done = counts.get("done", 0)
        bad = counts.get("failed", 0) + counts.get("no_capacity", 0)
        status = "completed" if bad == 0 else ("failed" if done == 0 else "completed_with_errors")
        now = datetime.now(UTC)
        seconds = store.seconds_since(evac["created_at"], now)
        await conn.execute("UPDATE evacuations SET status=$2, completed_at=$3 WHERE id=$1", evac_id, status, now)
        await audit(conn, "evacuation-closed", f"{status}: {done} rebuilt, {bad} not", host=evac["source"],
                    evacuation_id=evac_id)
        await emit(conn, EvacuationCompleted(evacuation_id=str(evac_id), source=evac["source"], status=status,
                                             placed=done, failed=bad, seconds=round(seconds, 3)), SOURCE)
        metrics.EVACUATIONS.labels(status=status).inc()
        metrics.RECOVERY_SECONDS.observe(seconds)
        log.info("evacuation %s of %s %s in %.2fs", evac_id, evac["source"], status, seconds)

async def amain(settings: PlannerSettings) -> None:
    require_infra(settings)
    await Planner(settings).main()
