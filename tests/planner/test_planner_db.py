"""The planner's shell against a real PostgreSQL (no broker needed: it only writes the
outbox): NodeDown handled once per message id, reserved hosts used by the recovery
method and taken out of the reserved pool, a manual evacuation of an up host refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.common.db import connect_pool, migrate
from services.common.schemas import EvacuationRequested, NodeDown, wrap
from services.common.settings import PlannerSettings
from services.evacctl.stack import admin_sql, with_database
from services.planner.service import Planner


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    name = f"evacuate_planner_{uuid.uuid4().hex[:8]}"
    await admin_sql(database_url, f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    await migrate(url)
    p = await connect_pool(url)
    async with p.acquire() as c:
        await c.execute(
            "INSERT INTO hosts (name, state, vcpus, memory_mib, reserved, recovery_method) VALUES"
            " ('src', 'down', 32, 65536, false, 'reserved_host'), ('r1', 'up', 32, 65536, true, 'auto'),"
            " ('n1', 'up', 32, 65536, false, 'auto'), ('busy', 'up', 32, 65536, false, 'auto')")
        for i in range(2):
            await c.execute(
                "INSERT INTO instances (uuid, name, host, power_state, vcpus, memory_mib, xml, reported_at)"
                " VALUES ($1, $2, 'src', 'running', 2, 2048, '<domain/>', $3)",
                uuid.uuid4(), f"vm{i}", datetime.now(UTC))
    yield p
    await p.close()
    await admin_sql(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def planner(pool: asyncpg.Pool) -> Planner:
    p = Planner(PlannerSettings(kafka_bootstrap="127.0.0.1:9", database_url="postgresql://unused/x"))
    p.pool = pool
    return p


async def test_node_down_uses_reserved_host_once_and_takes_it_out_of_the_pool(pool: asyncpg.Pool) -> None:
    p = planner(pool)
    env = wrap(NodeDown(host="src", reason="fenced by process", fenced_by="process"), "test")
    await p.on_event(env, NodeDown.model_validate(env.data))
    await p.on_event(env, NodeDown.model_validate(env.data))  # redelivered: nothing twice
    async with pool.acquire() as c:
        evacs = await c.fetch("SELECT * FROM evacuations")
        assert len(evacs) == 1 and evacs[0]["status"] == "running"
        items = await c.fetch("SELECT * FROM evacuation_items ORDER BY instance_name")
        assert [(i["target"], i["status"]) for i in items] == [("r1", "pending"), ("r1", "pending")]
        assert await c.fetchval("SELECT reserved FROM hosts WHERE name='r1'") is False
        assert await c.fetchval("SELECT count(*) FROM audit WHERE kind='reserved-host-taken' AND host='r1'") == 1
        plans = [json.loads(bytes(r["payload"])) for r in await c.fetch("SELECT payload FROM outbox")]
        kinds = [m["type"] for m in plans]
        assert kinds.count("EvacuationPlan") == 1
        plan = next(m for m in plans if m["type"] == "EvacuationPlan")["data"]
        assert {a["target"] for a in plan["assignments"]} == {"r1"} and len(plan["assignments"]) == 2


async def test_manual_evacuation_of_an_up_host_is_refused_with_the_reason(pool: asyncpg.Pool) -> None:
    p = planner(pool)
    env = wrap(EvacuationRequested(host="n1", requested_by="alice"), "test")
    await p.on_event(env, EvacuationRequested.model_validate(env.data))
    async with pool.acquire() as c:
        evac = await c.fetchrow("SELECT * FROM evacuations")
        assert evac["status"] == "refused" and "n1" in evac["reason"] and "is up" in evac["reason"]
        assert await c.fetchval("SELECT count(*) FROM evacuation_items") == 0


async def test_manual_target_that_is_the_failed_host_is_refused(pool: asyncpg.Pool) -> None:
    p = planner(pool)
    env = wrap(EvacuationRequested(host="src", target="src"), "test")
    await p.on_event(env, EvacuationRequested.model_validate(env.data))
    async with pool.acquire() as c:
        evac = await c.fetchrow("SELECT * FROM evacuations")
        assert evac["status"] == "refused" and "src" in evac["reason"], evac["reason"]
