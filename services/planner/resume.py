"""The planner resuming what it cannot have seen: at start and after the broker lost its
data (reconcile from PostgreSQL), and executors that never answer (the timeout sweep)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from services.common.db import DB_TRANSIENT
from services.planner import store

if TYPE_CHECKING:
    from services.planner.service import Planner

log = logging.getLogger("services.planner")


async def reconcile(self: Planner) -> None:
    """DESIGN §6, at start and when the broker lost its data: start the evacuation of
    every host that is down with none started since (its NodeDown may be lost), and
    re-publish the orders of every open evacuation. The broker may have lost them; a
    duplicate is harmless (the executor and this planner are idempotent)."""
    assert self.pool is not None
    async with self.pool.acquire() as conn, conn.transaction():
        for host in await store.down_hosts_unhandled(conn):
            trigger_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"evacuate:reconcile:{host['name']}:"
                                                            f"{host['state_since'].isoformat()}"))
            log.warning("reconcile: %s is down since %s with no evacuation: starting it", host["name"],
                        host["state_since"])
            await self.start_evacuation(conn, host["name"], "NodeDown", trigger_id, None, (),
                                        f"NodeDown (reconciled from the database): {host['state_reason']}")
        for evac in await conn.fetch("SELECT * FROM evacuations WHERE status='running'"):
            rows = [r for r in await store.item_rows(conn, evac["id"]) if r["status"] == "pending"]
            if not rows:
                await self.maybe_close(conn, evac["id"])
                continue
            inst = {r["instance_uuid"]: await conn.fetchrow("SELECT * FROM instances WHERE uuid=$1",
                                                             r["instance_uuid"]) for r in rows}
            await store.emit_plans(conn, str(evac["id"]), evac["source"], [
                self._assignment(inst[r["instance_uuid"]], str(r["id"]), r["target"], r["attempt"],
                                 evac["leave_stopped"])
                for r in rows])
            log.info("reconcile: re-published %d pending orders of evacuation %s", len(rows), evac["id"])

async def sweep_timeouts(self: Planner) -> None:
    """An executor that never answers: retry its items elsewhere after result_timeout."""
    assert self.pool is not None
    while True:
        await asyncio.sleep(min(5.0, self.s.result_timeout / 4))
        try:
            await _sweep_once(self)
        except DB_TRANSIENT as exc:  # the next round sweeps again
            log.warning("timeout sweep skipped: %r", exc)

async def _sweep_once(self: Planner) -> None:
    assert self.pool is not None
    cutoff = datetime.now(UTC) - timedelta(seconds=self.s.result_timeout)
    async with self.pool.acquire() as conn, conn.transaction():
        for item in await conn.fetch(
            "SELECT * FROM evacuation_items WHERE status='pending' AND ordered_at < $1 FOR UPDATE SKIP LOCKED",
            cutoff,
        ):
            await self.retry_or_fail(conn, item, item["target"],
                                     f"no result from {item['target']} within {self.s.result_timeout:.0f}s", [])
            await self.maybe_close(conn, item["evacuation_id"])
