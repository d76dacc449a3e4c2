"""A manual evacuation with leave_stopped (Nova's evacuate from 2.95) rebuilds its
instances stopped, on the retry too; an instance it names moves even with HA off."""

from __future__ import annotations

import json

import asyncpg

from services.common.schemas import EvacuationRequested, RebuildResult, wrap
from tests.planner.test_planner_db import planner, pool  # noqa: F401 - the fixture


async def plans(c: asyncpg.Connection) -> list[dict[str, object]]:
    out = [json.loads(bytes(r["payload"])) for r in await c.fetch("SELECT payload FROM outbox ORDER BY id")]
    return [m["data"] for m in out if m["type"] == "EvacuationPlan"]


async def test_leave_stopped_survives_a_retry_and_overrides_ha_off(pool: asyncpg.Pool) -> None:  # noqa: F811
    p = planner(pool)
    async with pool.acquire() as c:
        vm = await c.fetchrow("UPDATE instances SET ha = false WHERE name = 'vm0' RETURNING uuid")
    env = wrap(EvacuationRequested(host="src", target="n1", instances=(str(vm["uuid"]),), leave_stopped=True),
               "nova-api")
    await p.on_event(env, EvacuationRequested.model_validate(env.data))
    async with pool.acquire() as c:
        evac = await c.fetchrow("SELECT * FROM evacuations")
        assert evac["status"] == "running" and evac["leave_stopped"] is True
        first = (await plans(c))[0]["assignments"]
        assert [(a["instance_name"], a["target"], a["power_state"]) for a in first] == [("vm0", "n1", "shutoff")]
        item = await c.fetchrow("SELECT * FROM evacuation_items")
    failed = RebuildResult(order_id=str(item["order_id"]), evacuation_id=str(evac["id"]), item_id=str(item["id"]),
                           instance_uuid=str(vm["uuid"]), host="n1", attempt=1, ok=False, error="define failed")
    await p.on_event(wrap(failed, "executor@n1"), failed)
    async with pool.acquire() as c:
        retry = (await plans(c))[-1]["assignments"]
        assert len(retry) == 1 and retry[0]["target"] != "n1" and retry[0]["power_state"] == "shutoff"
        assert retry[0]["attempt"] == 2
