"""The planner's SQL: loading what placement needs and recording what it decided."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.common.outbox import emit
from services.common.schemas import Assignment, EvacuationPlan
from services.planner.placement import (
    Flavor,
    GroupPolicy,
    HostInfo,
    InstanceInfo,
    RecoveryMethod,
    ServerGroup,
)

# Serialises planning so that two hosts failing together never get the same capacity.
PLANNING_LOCK = 72_410_002


async def lock_planning(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PLANNING_LOCK)


async def load_hosts(conn: asyncpg.Connection) -> tuple[list[HostInfo], dict[str, RecoveryMethod]]:
    """Every host with its usage: instances placed on it plus rebuilds in flight to it."""
    rows = await conn.fetch(
        """
        SELECT h.*,
          COALESCE(u.vcpus, 0) + COALESCE(p.vcpus, 0) AS used_vcpus,
          COALESCE(u.mem, 0) + COALESCE(p.mem, 0) AS used_mem,
          COALESCE(u.disk, 0) + COALESCE(p.disk, 0) AS used_disk
        FROM hosts h
        LEFT JOIN (SELECT host, sum(vcpus) vcpus, sum(memory_mib) mem, sum(disk_gib) disk
                   FROM instances WHERE present GROUP BY host) u ON u.host = h.name
        LEFT JOIN (SELECT it.target, sum(i.vcpus) vcpus, sum(i.memory_mib) mem, sum(i.disk_gib) disk
                   FROM evacuation_items it JOIN instances i ON i.uuid = it.instance_uuid
                   WHERE it.status = 'pending' AND i.host <> it.target GROUP BY it.target) p
          ON p.target = h.name
        ORDER BY h.name
        """
    )
    hosts = [
        HostInfo(
            name=r["name"], vcpus=r["vcpus"], memory_mib=r["memory_mib"], disk_gib=r["disk_gib"],
            up=r["state"] == "up", enabled=r["enabled"], reserved=r["reserved"],
            cpu_ratio=r["cpu_ratio"], ram_ratio=r["ram_ratio"], disk_ratio=r["disk_ratio"],
            used=Flavor(int(r["used_vcpus"]), int(r["used_mem"]), int(r["used_disk"])),
        )
        for r in rows
        if r["vcpus"] > 0  # a host whose inventory never arrived cannot be a target
    ]
    methods = {r["name"]: RecoveryMethod(r["recovery_method"]) for r in rows}
    return hosts, methods


def instance_info(r: asyncpg.Record) -> InstanceInfo:
    return InstanceInfo(
        uuid=str(r["uuid"]), name=r["name"], host=r["host"],
        flavor=Flavor(r["vcpus"], r["memory_mib"], r["disk_gib"]),
        ha=r["ha"], priority=r["priority"], group=r["server_group"],
        evacuable=r["evacuable"], not_evacuable_reason=r["not_evacuable_reason"],
    )


async def load_instances(conn: asyncpg.Connection, host: str, only: Sequence[str] = ()) -> list[asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM instances WHERE host = $1 AND present ORDER BY name", host)
    if only:
        wanted = {u.lower() for u in only}
        rows = [r for r in rows if str(r["uuid"]) in wanted or r["name"] in wanted]
    return list(rows)


async def load_groups(conn: asyncpg.Connection) -> list[ServerGroup]:
    rows = await conn.fetch(
        "SELECT g.name, g.policy, array_agg(i.uuid::text) AS members FROM server_groups g"
        " JOIN instances i ON i.server_group = g.name GROUP BY g.name, g.policy ORDER BY g.name"
    )
    return [ServerGroup(name=r["name"], policy=GroupPolicy(r["policy"]), members=frozenset(r["members"]))
            for r in rows]


async def open_evacuation(conn: asyncpg.Connection, source: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM evacuations WHERE source = $1 AND status = 'running' LIMIT 1", source
    )


async def item_rows(conn: asyncpg.Connection, evacuation_id: Any) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT it.*, i.xml, i.power_state AS instance_power_state, i.template, i.metadata"
        " FROM evacuation_items it JOIN instances i ON i.uuid = it.instance_uuid"
        " WHERE it.evacuation_id = $1 ORDER BY it.instance_name", evacuation_id,
    ))


def seconds_since(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


# A host's state_since comes from the detector's clock, an evacuation's created_at from
# the database's: this much skew between them is tolerated.
CLOCK_SKEW = "2 seconds"
# An evacuation that handles the host's current failure: started since it went down, and
# not a manual request that was refused (a NodeDown must not be skipped for that).
_HANDLED = (f"e.created_at >= h.state_since - interval '{CLOCK_SKEW}'"
            " AND (e.trigger = 'NodeDown' OR e.status <> 'refused')")


async def down_episode_handled(conn: asyncpg.Connection, host: str) -> bool:
    """An evacuation of this host was started during its current down state."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM hosts h JOIN evacuations e ON e.source = h.name WHERE h.name = $1"
        f" AND h.state = 'down' AND {_HANDLED})", host))


async def down_hosts_unhandled(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Hosts that are down with no NodeDown evacuation started since they went down."""
    return list(await conn.fetch(
        "SELECT h.name, h.state_since, h.state_reason FROM hosts h WHERE h.state = 'down' AND NOT EXISTS"
        f" (SELECT 1 FROM evacuations e WHERE e.source = h.name AND {_HANDLED}) ORDER BY h.name"))


# Assignments per EvacuationPlan message: each carries its instance's domain XML, and a
# 1,000-VM host's plan in one message (~1.5 MB) would exceed Kafka's 1 MB default.
PLAN_CHUNK = 100


async def emit_plans(conn: asyncpg.Connection, evacuation_id: str, source: str, assignments: list[Assignment]) -> None:
    """An evacuation's plan as messages of at most PLAN_CHUNK assignments (the templater
    handles each on its own)."""
    for i in range(0, len(assignments), PLAN_CHUNK):
        await emit(conn, EvacuationPlan(evacuation_id=evacuation_id, source=source,
                                        assignments=tuple(assignments[i:i + PLAN_CHUNK])), source="planner")
