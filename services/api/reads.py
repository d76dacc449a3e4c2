"""Read endpoints: hosts, instances, evacuations (with their items and audit trail)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Query

from services.api.access import POOL, READER

router = APIRouter(prefix="/v1", dependencies=[READER], tags=["read"])

LIMIT = Query(100, ge=1, le=1000, description="Page size")
OFFSET = Query(0, ge=0, le=1_000_000_000, description="Rows to skip")
TRIGGER_ID = Query(None, description="The id of the message that started it (e.g. an EvacuationRequested)")

HOSTS_SQL = """
SELECT h.*, COALESCE(u.n, 0) AS used_instances, COALESCE(u.vcpus, 0) AS used_vcpus,
       COALESCE(u.mem, 0) AS used_mem, COALESCE(u.disk, 0) AS used_disk
FROM hosts h
LEFT JOIN (SELECT host, count(*) n, sum(vcpus) vcpus, sum(memory_mib) mem, sum(disk_gib) disk
           FROM instances WHERE present GROUP BY host) u ON u.host = h.name
"""

INSTANCE_COLUMNS = ("uuid, name, host, power_state, vcpus, memory_mib, disk_gib, macs, ips, evacuable,"
                    " not_evacuable_reason, ha, priority, server_group, template, metadata, present, reported_at")


def host_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": r["name"], "state": r["state"], "state_since": r["state_since"], "state_reason": r["state_reason"],
        "last_heartbeat": r["last_heartbeat"],
        "fence": {"driver": r["fence_driver"], "target": r["fence_target"]},
        "capacity": {"vcpus": r["vcpus"], "memory_mib": r["memory_mib"], "disk_gib": r["disk_gib"],
                     "cpu_ratio": r["cpu_ratio"], "ram_ratio": r["ram_ratio"], "disk_ratio": r["disk_ratio"]},
        "usage": {"instances": int(r["used_instances"]), "vcpus": int(r["used_vcpus"]),
                  "memory_mib": int(r["used_mem"]), "disk_gib": int(r["used_disk"])},
        "enabled": r["enabled"], "reserved": r["reserved"], "recovery_method": r["recovery_method"],
        "inventory_at": r["inventory_at"],
    }


async def fetch_host(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> dict[str, Any]:
    row = await conn.fetchrow(HOSTS_SQL + " WHERE h.name = $1", name)
    if row is None:
        raise HTTPException(404, f"unknown host {name!r}")
    return host_view(row)


def page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/hosts", summary="Every host with its state, fencing record, capacity, usage and flags")
async def list_hosts(db: asyncpg.Pool = POOL) -> dict[str, Any]:
    rows = await db.fetch(HOSTS_SQL + " ORDER BY h.name")
    return page([host_view(r) for r in rows], len(rows), len(rows), 0)


@router.get("/hosts/{name}", summary="One host, with the failure detector's record and its open evacuation")
async def get_host(name: str, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    host = await fetch_host(db, name)
    row = await db.fetchrow("SELECT detector FROM hosts WHERE name = $1", name)
    host["detector"] = row["detector"] if row else None
    open_evac = await db.fetchval(
        "SELECT id FROM evacuations WHERE source = $1 AND status = 'running' LIMIT 1", name)
    host["open_evacuation"] = open_evac
    return host


@router.get("/instances", summary="Instances, filtered by host and HA policy")
async def list_instances(host: str | None = Query(None, max_length=255), ha: bool | None = None,
                         limit: int = LIMIT, offset: int = OFFSET, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    where = "WHERE ($1::text IS NULL OR host = $1) AND ($2::boolean IS NULL OR ha = $2)"
    total = await db.fetchval(f"SELECT count(*) FROM instances {where}", host, ha)
    rows = await db.fetch(
        f"SELECT {INSTANCE_COLUMNS} FROM instances {where} ORDER BY host, name, uuid LIMIT $3 OFFSET $4",
        host, ha, limit, offset)
    return page([dict(r) for r in rows], total, limit, offset)


@router.get("/instances/{instance_uuid}", summary="One instance, with its domain XML")
async def get_instance(instance_uuid: uuid.UUID, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    row = await db.fetchrow(f"SELECT {INSTANCE_COLUMNS}, xml FROM instances WHERE uuid = $1", instance_uuid)
    if row is None:
        raise HTTPException(404, f"unknown instance {instance_uuid}")
    return dict(row)


EVAC_SQL = """
SELECT e.*, COALESCE(c.total, 0) AS items, COALESCE(c.done, 0) AS done, COALESCE(c.pending, 0) AS pending,
       COALESCE(c.total, 0) - COALESCE(c.done, 0) - COALESCE(c.pending, 0) AS not_done
FROM evacuations e
LEFT JOIN (SELECT evacuation_id, count(*) total, count(*) FILTER (WHERE status = 'done') done,
                  count(*) FILTER (WHERE status = 'pending') pending
           FROM evacuation_items GROUP BY evacuation_id) c ON c.evacuation_id = e.id
"""


def evacuation_view(r: asyncpg.Record) -> dict[str, Any]:
    out = dict(r)
    out["counts"] = {"items": int(r["items"]), "done": int(r["done"]), "pending": int(r["pending"]),
                     "not_done": int(r["not_done"])}
    for k in ("items", "done", "pending", "not_done"):
        out.pop(k)
    return out


@router.get("/evacuations", summary="Evacuations, newest first")
async def list_evacuations(source: str | None = Query(None, max_length=255),
                           status: str | None = Query(None, max_length=64),
                           trigger_id: uuid.UUID | None = TRIGGER_ID,
                           limit: int = LIMIT, offset: int = OFFSET, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    where = ("WHERE ($1::text IS NULL OR e.source = $1) AND ($2::text IS NULL OR e.status = $2)"
             " AND ($3::uuid IS NULL OR e.trigger_id = $3)")
    total = await db.fetchval(f"SELECT count(*) FROM evacuations e {where}", source, status, trigger_id)
    rows = await db.fetch(f"{EVAC_SQL} {where} ORDER BY e.created_at DESC, e.id LIMIT $4 OFFSET $5",
                          source, status, trigger_id, limit, offset)
    return page([evacuation_view(r) for r in rows], total, limit, offset)


@router.get("/evacuations/{evacuation_id}", summary="One evacuation: its items and the audit trail of why")
async def get_evacuation(evacuation_id: uuid.UUID, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    row = await db.fetchrow(EVAC_SQL + " WHERE e.id = $1", evacuation_id)
    if row is None:
        raise HTTPException(404, f"unknown evacuation {evacuation_id}")
    out = evacuation_view(row)
    items = await db.fetch(
        "SELECT id, instance_uuid, instance_name, source, target, attempt, status, reason, power_state, excluded,"
        " order_id, steps, created_at, ordered_at, finished_at FROM evacuation_items"
        " WHERE evacuation_id = $1 ORDER BY instance_name, id", evacuation_id)
    out["items"] = [dict(i) for i in items]
    audit = await db.fetch("SELECT at, kind, detail, host, data FROM audit WHERE evacuation_id = $1 ORDER BY at, id",
                           evacuation_id)
    out["audit"] = [dict(a) for a in audit]
    return out
