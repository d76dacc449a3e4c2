"""The inventory: what each host's InstanceReport says, kept in PostgreSQL.

A report never moves an instance away from the host the system of record puts it on
when the reporting host is not ``up`` (a returning host's stale copies are cleaned up,
not adopted), nor while a rebuild of that instance is in flight."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import asyncpg

from services.common.db import audit
from services.common.schemas import InstanceReport


class SeenDomains:
    """What this planner last wrote for each (host, domain): a hash of the reported domain.
    A domain reported again unchanged, whose row still says it is on that host in that
    power state and present, needs no upsert — only its reported_at moves. An empty cache
    (a restarted planner) only costs a full write once."""

    def __init__(self) -> None:
        self.by_host: dict[str, dict[uuid.UUID, int]] = {}

    def unchanged(self, host: str, key: uuid.UUID, digest: int, row: asyncpg.Record | None) -> bool:
        return (row is not None and self.by_host.get(host, {}).get(key) == digest and row["host"] == host
                and row["present"] and row["power_state"] is not None)

    def remember(self, host: str, seen: dict[uuid.UUID, int]) -> None:
        self.by_host[host] = seen


async def record_report(conn: asyncpg.Connection, report: InstanceReport, at: datetime,
                        cache: SeenDomains | None = None) -> None:
    await conn.execute(
        "INSERT INTO hosts (name, vcpus, memory_mib, disk_gib, inventory_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (name) DO UPDATE SET vcpus=$2, memory_mib=$3, disk_gib=$4, inventory_at=$5",
        report.host, report.vcpus, report.memory_mib, report.disk_gib, at,
    )
    host_state = await conn.fetchval("SELECT state FROM hosts WHERE name=$1", report.host)
    uuids = [uuid.UUID(d.uuid) for d in report.domains]
    existing = {r["uuid"]: r for r in await conn.fetch(
        "SELECT i.uuid, i.host, i.reported_at, i.present, i.power_state, EXISTS (SELECT 1 FROM evacuation_items it"
        "  WHERE it.instance_uuid = i.uuid AND it.status = 'pending') AS in_flight"
        " FROM instances i WHERE i.uuid = ANY($1::uuid[])", uuids)}
    seen: dict[uuid.UUID, int] = {}
    unchanged: list[uuid.UUID] = []
    for d in report.domains:
        key = uuid.UUID(d.uuid)
        old = existing.get(key)
        digest = hash(d)
        if old is not None:
            if old["reported_at"] > at:
                continue  # an older report than what we know
            if cache is not None and old["power_state"] == str(d.power_state) and cache.unchanged(
                    report.host, key, digest, old):
                seen[key] = digest
                unchanged.append(key)
                continue
            if old["host"] != report.host and (host_state != "up" or old["in_flight"]):
                continue
            if old["host"] != report.host:
                await audit(conn, "instance-moved", f"{d.name} now reported by {report.host} (was {old['host']})",
                            host=report.host)
        await conn.execute(
            "INSERT INTO instances (uuid, name, host, power_state, vcpus, memory_mib, xml, macs, ips, disks,"
            " evacuable, not_evacuable_reason, present, reported_at)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,true,$13)"
            " ON CONFLICT (uuid) DO UPDATE SET name=$2, host=$3, power_state=$4, vcpus=$5, memory_mib=$6, xml=$7,"
            " macs=$8, ips=$9, disks=$10, evacuable=$11, not_evacuable_reason=$12, present=true, reported_at=$13",
            key, d.name, report.host, str(d.power_state), d.vcpus, d.memory_mib, d.xml,
            [n.mac for n in d.nics], [n.ip for n in d.nics if n.ip],
            json.loads(json.dumps([x.model_dump() for x in d.disks])),
            d.evacuable, d.not_evacuable_reason, at,
        )
        seen[key] = digest
    if unchanged:
        await conn.execute("UPDATE instances SET reported_at=$3 WHERE uuid = ANY($1::uuid[]) AND host=$2"
                           " AND reported_at < $3", unchanged, report.host, at)
    # Instances this host no longer has (undefined, or migrated away by someone else).
    await conn.execute(
        "UPDATE instances SET present=false WHERE host=$1 AND present AND NOT (uuid = ANY($2::uuid[]))"
        " AND reported_at <= $3",
        report.host, uuids, at,
    )
    if cache is not None:
        cache.remember(report.host, seen)
