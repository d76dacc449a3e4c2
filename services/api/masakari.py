"""The Masakari-compatible front door, under /instance-ha/v1: version documents (served at
the endpoint root too: openstacksdk discovers them first), failover segments and their
hosts. Notifications are in masakari_notifications.py.

A segment's recovery_method becomes the planner's recovery method of each of its hosts
(hosts.recovery_method); a segment host's `reserved` is our hosts.reserved and its
`on_maintenance` is the detector's maintenance state (setting it sends the maintenance or
enable command). A host belongs to one segment at most.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.access import POOL
from services.api.commands import HostAction, detector_command, host_flag
from services.api.openstack_common import (
    ADMIN,
    READER,
    Fault,
    Microversions,
    from_http,
    int_or_uuid,
    json_object,
    member,
    reply,
    validated,
)
from services.common.db import audit

MASAKARI = Microversions("instance-ha", (1, 0), (1, 2))
VERSION = Depends(MASAKARI.dependency())
root = APIRouter(prefix="/instance-ha", tags=["openstack: masakari"])
router = APIRouter(prefix="/instance-ha/v1", tags=["openstack: masakari"], dependencies=[VERSION])
Method = Literal["auto", "reserved_host", "auto_priority", "rh_priority"]


def version_doc(request: Request) -> dict[str, Any]:
    return {"id": "v1.0", "status": "CURRENT", "version": MASAKARI.text(MASAKARI.maximum),
            "min_version": MASAKARI.text(MASAKARI.minimum), "updated": "2016-07-01T11:33:21Z",
            "links": [{"rel": "self", "href": f"{request.base_url}instance-ha/v1/"}]}


@root.get("/", summary="Masakari: the API versions (no token needed)")
async def versions(request: Request) -> dict[str, Any]:
    return {"versions": [version_doc(request)]}


@root.get("/v1", summary="Masakari: the v1 version document (no token needed)")
@root.get("/v1/", include_in_schema=False)
async def version(request: Request) -> dict[str, Any]:
    return {"version": version_doc(request)}


# --- segments --------------------------------------------------------------------------


def segment_view(r: asyncpg.Record, v: tuple[int, int]) -> dict[str, Any]:
    view = {"id": r["id"], "uuid": str(r["uuid"]), "name": r["name"], "description": r["description"],
            "recovery_method": r["recovery_method"], "service_type": r["service_type"],
            "created_at": r["created_at"].isoformat(),
            "updated_at": r["updated_at"].isoformat() if r["updated_at"] else None, "deleted": False}
    if v >= (1, 2):
        view["enabled"] = r["enabled"]
    return view


async def fetch_segment(db: asyncpg.Pool | asyncpg.Connection, segment_id: str) -> asyncpg.Record:
    rid, ruuid = int_or_uuid(segment_id)
    row = await db.fetchrow("SELECT * FROM failover_segments WHERE id = $1 OR uuid = $2::uuid", rid, ruuid)
    if row is None:
        raise Fault(404, f"Failover segment {segment_id} could not be found.")
    return row


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=255)
    recovery_method: Method | None = None
    service_type: str | None = Field(None, min_length=1, max_length=255)
    enabled: bool | None = None


def segment_in(data: dict[str, Any], v: tuple[int, int], create: bool) -> SegmentIn:
    body = validated(SegmentIn, member(data, "segment"), "segment")
    if body.enabled is not None and v < (1, 2):
        raise Fault(400, "Invalid input for segment: 'enabled' needs microversion 1.2")
    missing = [f for f in ("name", "recovery_method", "service_type") if create and getattr(body, f) is None]
    if missing:
        raise Fault(400, f"Invalid input for segment: {missing[0]!r} is a required property")
    if not create and not body.model_fields_set:
        raise Fault(400, "Invalid input for segment: nothing to update")
    return body


async def name_free(conn: asyncpg.Connection, name: str | None, keep: int | None = None) -> None:
    if name is not None and await conn.fetchval(
            "SELECT 1 FROM failover_segments WHERE name = $1 AND id IS DISTINCT FROM $2", name, keep):
        raise Fault(409, f"Failover segment with name {name} already exists.")


@router.post("/segments", dependencies=[ADMIN], summary="Masakari: create a failover segment")
async def create_segment(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    body = segment_in(await json_object(request), v, create=True)
    async with db.acquire() as conn, conn.transaction():
        await name_free(conn, body.name)
        row = await conn.fetchrow(
            "INSERT INTO failover_segments (uuid, name, description, recovery_method, service_type, enabled)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *", uuid.uuid4(), body.name, body.description,
            body.recovery_method, body.service_type, True if body.enabled is None else body.enabled)
        await audit(conn, "segment-created", f"failover segment {body.name} ({body.recovery_method})",
                    data={"segment": str(row["uuid"])})
    return reply(request, {"segment": segment_view(row, v)}, 201)


@router.get("/segments", dependencies=[READER], summary="Masakari: failover segments")
async def list_segments(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    q = request.query_params
    rows = await db.fetch(
        "SELECT * FROM failover_segments WHERE ($1::text IS NULL OR recovery_method = $1)"
        " AND ($2::text IS NULL OR service_type = $2) ORDER BY created_at DESC, id DESC",
        q.get("recovery_method"), q.get("service_type"))
    enabled = q.get("enabled")
    if enabled is not None:
        rows = [r for r in rows if str(r["enabled"]).lower() == enabled.lower()]
    return reply(request, {"segments": [segment_view(r, v) for r in rows]})


@router.get("/segments/{segment_id}", dependencies=[READER], summary="Masakari: one failover segment")
async def get_segment(request: Request, segment_id: str, v: tuple[int, int] = VERSION,
                      db: asyncpg.Pool = POOL) -> Response:
    return reply(request, {"segment": segment_view(await fetch_segment(db, segment_id), v)})


@router.put("/segments/{segment_id}", dependencies=[ADMIN], summary="Masakari: update a failover segment")
async def update_segment(request: Request, segment_id: str, v: tuple[int, int] = VERSION,
                         db: asyncpg.Pool = POOL) -> Response:
    body = segment_in(await json_object(request), v, create=False)
    changes = {k: getattr(body, k) for k in body.model_fields_set if getattr(body, k) is not None or k == "description"}
    async with db.acquire() as conn, conn.transaction():
        seg = await fetch_segment(conn, segment_id)
        await name_free(conn, body.name, seg["id"])
        if changes:
            sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
            await conn.execute(f"UPDATE failover_segments SET {sets}, updated_at = now() WHERE id = $1",
                               seg["id"], *changes.values())
        if "recovery_method" in changes:
            await conn.execute("UPDATE hosts SET recovery_method = $2 WHERE name IN"
                               " (SELECT name FROM segment_hosts WHERE segment_id = $1)", seg["id"],
                               changes["recovery_method"])
        await audit(conn, "segment-updated", f"failover segment {seg['name']}: {', '.join(sorted(changes))} set",
                    data={"segment": str(seg["uuid"]), **{k: v for k, v in changes.items() if k != "description"}})
        row = await fetch_segment(conn, str(seg["id"]))
    return reply(request, {"segment": segment_view(row, v)})


@router.delete("/segments/{segment_id}", dependencies=[ADMIN], status_code=204,
               summary="Masakari: delete a failover segment and its hosts (their recovery method becomes auto)")
async def delete_segment(request: Request, segment_id: str, db: asyncpg.Pool = POOL) -> Response:
    async with db.acquire() as conn, conn.transaction():
        seg = await fetch_segment(conn, segment_id)
        await conn.execute("UPDATE hosts SET recovery_method = 'auto' WHERE name IN"
                           " (SELECT name FROM segment_hosts WHERE segment_id = $1)", seg["id"])
        await conn.execute("DELETE FROM failover_segments WHERE id = $1", seg["id"])
        await audit(conn, "segment-deleted", f"failover segment {seg['name']} deleted",
                    data={"segment": str(seg["uuid"])})
    return reply(request, None, 204)


# --- segment hosts ---------------------------------------------------------------------

HOSTS_SQL = """
SELECT sh.*, h.reserved, h.state = 'maintenance' AS on_maintenance, s.uuid AS segment_uuid
FROM segment_hosts sh JOIN hosts h ON h.name = sh.name JOIN failover_segments s ON s.id = sh.segment_id
"""


def host_view(r: asyncpg.Record, seg: asyncpg.Record, v: tuple[int, int]) -> dict[str, Any]:
    return {"id": r["id"], "uuid": str(r["uuid"]), "name": r["name"], "type": r["type"],
            "control_attributes": r["control_attributes"], "reserved": r["reserved"],
            "on_maintenance": r["on_maintenance"], "failover_segment_id": str(r["segment_uuid"]),
            "failover_segment": segment_view(seg, v), "created_at": r["created_at"].isoformat(),
            "updated_at": r["updated_at"].isoformat() if r["updated_at"] else None, "deleted": False}


async def fetch_host(db: asyncpg.Pool | asyncpg.Connection, seg: asyncpg.Record, host_id: str) -> asyncpg.Record:
    rid, ruuid = int_or_uuid(host_id)
    row = await db.fetchrow(HOSTS_SQL + " WHERE sh.segment_id = $1 AND (sh.id = $2 OR sh.uuid = $3::uuid"
                            " OR sh.name = $4)", seg["id"], rid, ruuid, host_id)
    if row is None:
        raise Fault(404, f"Host {host_id} could not be found in failover segment {seg['uuid']}.")
    return row


class HostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=255)
    type: str | None = Field(None, min_length=1, max_length=255)
    control_attributes: str | None = Field(None, min_length=1)
    reserved: bool | None = None
    on_maintenance: bool | None = None


async def apply_flags(db: asyncpg.Pool, name: str, body: HostIn) -> None:
    """reserved and on_maintenance through our own commands (one truth: the hosts table and
    the detector)."""
    try:
        if body.reserved is not None:
            await host_flag(name, HostAction.RESERVE if body.reserved else HostAction.UNRESERVE, db)
        state = await db.fetchval("SELECT state FROM hosts WHERE name = $1", name)
        if body.on_maintenance and state != "maintenance":
            await detector_command(db, name, HostAction.MAINTENANCE)
        elif body.on_maintenance is False and state == "maintenance":
            await host_flag(name, HostAction.ENABLE, db)
    except HTTPException as exc:
        raise from_http(exc) from None


@router.post("/segments/{segment_id}/hosts", dependencies=[ADMIN], summary="Masakari: add a host to a segment")
async def create_host(request: Request, segment_id: str, v: tuple[int, int] = VERSION,
                      db: asyncpg.Pool = POOL) -> Response:
    body = validated(HostIn, member(await json_object(request), "host"), "host")
    for f in ("name", "type", "control_attributes"):
        if getattr(body, f) is None:
            raise Fault(400, f"Invalid input for host: {f!r} is a required property")
    async with db.acquire() as conn, conn.transaction():
        seg = await fetch_segment(conn, segment_id)
        if await conn.fetchval("SELECT 1 FROM hosts WHERE name = $1", body.name) is None:
            raise Fault(400, f"Compute host {body.name} could not be found: no such host has reported here")
        other = await conn.fetchval("SELECT s.name FROM segment_hosts sh JOIN failover_segments s ON"
                                    " s.id = sh.segment_id WHERE sh.name = $1", body.name)
        if other is not None:
            raise Fault(409, f"Host with name {body.name} already exists (in failover segment {other}): a host "
                        "belongs to one segment at most")
        await conn.execute("INSERT INTO segment_hosts (uuid, name, segment_id, type, control_attributes)"
                           " VALUES ($1, $2, $3, $4, $5)", uuid.uuid4(), body.name, seg["id"], body.type,
                           body.control_attributes)
        await conn.execute("UPDATE hosts SET recovery_method = $2 WHERE name = $1", body.name, seg["recovery_method"])
        await audit(conn, "segment-host-added", f"{body.name} joins failover segment {seg['name']}: recovery "
                    f"method {seg['recovery_method']}", host=body.name, data={"segment": str(seg["uuid"])})
    await apply_flags(db, str(body.name), body)
    return reply(request, {"host": host_view(await fetch_host(db, seg, str(body.name)), seg, v)}, 201)


@router.get("/segments/{segment_id}/hosts", dependencies=[READER], summary="Masakari: the hosts of a segment")
async def list_hosts(request: Request, segment_id: str, v: tuple[int, int] = VERSION,
                     db: asyncpg.Pool = POOL) -> Response:
    seg = await fetch_segment(db, segment_id)
    rows = await db.fetch(HOSTS_SQL + " WHERE sh.segment_id = $1 ORDER BY sh.name", seg["id"])
    q = request.query_params
    for key in ("reserved", "on_maintenance"):
        if q.get(key) is not None:
            rows = [r for r in rows if str(r[key]).lower() == q[key].lower()]
    if q.get("type"):
        rows = [r for r in rows if r["type"] == q["type"]]
    return reply(request, {"hosts": [host_view(r, seg, v) for r in rows]})


@router.get("/segments/{segment_id}/hosts/{host_id}", dependencies=[READER], summary="Masakari: one segment host")
async def get_host(request: Request, segment_id: str, host_id: str, v: tuple[int, int] = VERSION,
                   db: asyncpg.Pool = POOL) -> Response:
    seg = await fetch_segment(db, segment_id)
    return reply(request, {"host": host_view(await fetch_host(db, seg, host_id), seg, v)})


@router.put("/segments/{segment_id}/hosts/{host_id}", dependencies=[ADMIN], summary="Masakari: update a segment host")
async def update_host(request: Request, segment_id: str, host_id: str, v: tuple[int, int] = VERSION,
                      db: asyncpg.Pool = POOL) -> Response:
    body = validated(HostIn, member(await json_object(request), "host"), "host")
    seg = await fetch_segment(db, segment_id)
    row = await fetch_host(db, seg, host_id)
    if body.name is not None and body.name != row["name"]:
        raise Fault(400, f"A segment host's name names a compute host and cannot change ({row['name']!r} to "
                    f"{body.name!r}): delete it and add the other host")
    changes = {k: getattr(body, k) for k in ("type", "control_attributes") if getattr(body, k) is not None}
    if changes:
        sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
        await db.execute(f"UPDATE segment_hosts SET {sets}, updated_at = now() WHERE id = $1", row["id"],
                         *changes.values())
    await apply_flags(db, row["name"], body)
    return reply(request, {"host": host_view(await fetch_host(db, seg, str(row["id"])), seg, v)})


@router.delete("/segments/{segment_id}/hosts/{host_id}", dependencies=[ADMIN], status_code=204,
               summary="Masakari: remove a host from its segment (its recovery method becomes auto)")
async def delete_host(request: Request, segment_id: str, host_id: str, db: asyncpg.Pool = POOL) -> Response:
    async with db.acquire() as conn, conn.transaction():
        seg = await fetch_segment(conn, segment_id)
        row = await fetch_host(conn, seg, host_id)
        await conn.execute("DELETE FROM segment_hosts WHERE id = $1", row["id"])
        await conn.execute("UPDATE hosts SET recovery_method = 'auto' WHERE name = $1", row["name"])
        await audit(conn, "segment-host-removed", f"{row['name']} leaves failover segment {seg['name']}",
                    host=row["name"], data={"segment": str(seg["uuid"])})
    return reply(request, None, 204)
