"""Nova's os-services, one nova-compute service per host. Its id is derived from the host
name (a uuid from 2.53, a small integer before), so nothing extra is stored for it.

- state: ``up`` while the detector has the host up (or in maintenance, or returning),
  ``down`` otherwise or when forced down; status: hosts.enabled.
- ``forced_down: true`` is the manual fence: our confirm-off (HostCommand confirm_off),
  accepted for a host that is suspect, fencing or isolated, recorded for one already
  down, refused (409) for a host whose heartbeats still arrive. ``false`` clears the flag.
- status disabled/enabled is our disable/enable of the host as a target.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.access import POOL
from services.api.commands import HostAction, detector_command, host_flag
from services.api.nova import VERSION
from services.api.openstack_common import ADMIN, READER, Fault, from_http, json_object, reply, validated
from services.common.db import audit

router = APIRouter(prefix="/compute/v2.1", tags=["openstack: nova"], dependencies=[VERSION])
BINARY = "nova-compute"
NAMESPACE = uuid.UUID("6a1f1c0e-3b7a-4c52-9d0e-5e7a2f0c9b11")
CONFIRMABLE = ("suspect", "fencing", "isolated")
LIVE = ("up", "maintenance", "returning")

SERVICES_SQL = """
SELECT h.name, h.state, h.state_reason, h.enabled, h.last_heartbeat, h.state_since,
       COALESCE(c.forced_down, false) AS forced_down, c.disabled_reason
FROM hosts h LEFT JOIN compute_services c ON c.host = h.name
"""


def service_uuid(host: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{BINARY}/{host}"))


def service_int(host: str) -> int:
    return int(uuid.uuid5(NAMESPACE, f"{BINARY}/{host}").hex[:7], 16)


def service_view(r: asyncpg.Record, v: tuple[int, int]) -> dict[str, Any]:
    updated = r["last_heartbeat"] or r["state_since"]
    view: dict[str, Any] = {
        "id": service_uuid(r["name"]) if v >= (2, 53) else service_int(r["name"]),
        "binary": BINARY, "host": r["name"], "zone": "nova",
        "status": "enabled" if r["enabled"] else "disabled",
        "state": "up" if r["state"] in LIVE and not r["forced_down"] else "down",
        "updated_at": updated.isoformat() if updated else None,
        "disabled_reason": r["disabled_reason"] if not r["enabled"] else None,
    }
    if v >= (2, 11):
        view["forced_down"] = r["forced_down"]
    return view


@router.get("/os-services", dependencies=[READER], summary="Nova: the compute services (one per host)")
async def list_services(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    host, binary = request.query_params.get("host"), request.query_params.get("binary")
    rows = [] if binary not in (None, BINARY) else await db.fetch(
        SERVICES_SQL + " WHERE ($1::text IS NULL OR h.name = $1) ORDER BY h.name", host)
    return reply(request, {"services": [service_view(r, v) for r in rows]})


async def by_uuid(db: asyncpg.Pool, service_id: str) -> asyncpg.Record:
    try:
        wanted = str(uuid.UUID(service_id))
    except ValueError:
        raise Fault(400, f"Invalid uuid {service_id}") from None
    for r in await db.fetch(SERVICES_SQL + " ORDER BY h.name"):
        if service_uuid(r["name"]) == wanted:
            return r
    raise Fault(404, f"Service {service_id} could not be found.")


async def by_host(db: asyncpg.Pool, data: dict[str, Any]) -> asyncpg.Record:
    host, binary = data.get("host"), data.get("binary")
    if not isinstance(host, str) or not isinstance(binary, str):
        raise Fault(400, "Invalid input: 'host' and 'binary' (strings) are required properties")
    row = await db.fetchrow(SERVICES_SQL + " WHERE h.name = $1", host)
    if row is None or binary != BINARY:
        raise Fault(404, f"Service {binary} on host {host} could not be found.")
    return row


async def set_status(db: asyncpg.Pool, host: str, enabled: bool, reason: str | None) -> None:
    try:
        await host_flag(host, HostAction.ENABLE if enabled else HostAction.DISABLE, db)
    except HTTPException as exc:
        raise from_http(exc) from None
    await db.execute(
        "INSERT INTO compute_services (host, disabled_reason) VALUES ($1, $2) ON CONFLICT (host)"
        " DO UPDATE SET disabled_reason = $2, updated_at = now()", host, None if enabled else reason)


async def set_forced_down(db: asyncpg.Pool, host: str, forced: bool) -> None:
    state = await db.fetchval("SELECT state FROM hosts WHERE name = $1", host)
    if forced and state in CONFIRMABLE:
        try:
            await detector_command(db, host, HostAction.CONFIRM_OFF)
        except HTTPException as exc:
            raise from_http(exc) from None
    elif forced and state != "down":
        raise Fault(409, f"host {host} is {state}: its heartbeats still arrive, so it cannot be forced down. "
                    f"forced_down is the manual fence (you confirm the host is off); it applies once the host is "
                    f"{', '.join(CONFIRMABLE)}")
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO compute_services (host, forced_down) VALUES ($1, $2) ON CONFLICT (host)"
            " DO UPDATE SET forced_down = $2, updated_at = now()", host, forced)
        await audit(conn, "nova-forced-down", f"nova-compute on {host}: forced_down {str(forced).lower()}"
                    f" (host was {state})", host=host, data={"forced_down": forced})


class ServiceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str | None = Field(None, pattern="^(enabled|disabled)$")
    disabled_reason: str | None = Field(None, min_length=1, max_length=255)
    forced_down: bool | None = None


@router.put("/os-services/{service_id}", dependencies=[ADMIN],
            summary="Nova: update a compute service (2.53+: by uuid; before: enable, disable, disable-log-reason,"
                    " force-down with host and binary)")
async def update_service(request: Request, service_id: str, v: tuple[int, int] = VERSION,
                         db: asyncpg.Pool = POOL) -> Response:
    data = await json_object(request)
    if v < (2, 53):
        return await legacy_update(request, service_id, data, v, db)
    row = await by_uuid(db, service_id)
    body = validated(ServiceUpdate, data, "service")
    if body.status is None and body.forced_down is None:
        raise Fault(400, "Must specify 'status' or 'forced_down' (or both)")
    if body.disabled_reason is not None and body.status != "disabled":
        raise Fault(400, "Specifying 'disabled_reason' with status other than 'disabled' is not allowed.")
    if body.status is not None:
        await set_status(db, row["name"], body.status == "enabled", body.disabled_reason)
    if body.forced_down is not None:
        await set_forced_down(db, row["name"], body.forced_down)
    fresh = await db.fetchrow(SERVICES_SQL + " WHERE h.name = $1", row["name"])
    return reply(request, {"service": service_view(fresh, v)})


LEGACY = {"enable", "disable", "disable-log-reason", "force-down"}


async def legacy_update(request: Request, action: str, data: dict[str, Any], v: tuple[int, int],
                        db: asyncpg.Pool) -> Response:
    if action not in LEGACY or (action == "force-down" and v < (2, 11)):
        raise Fault(404, f"Unknown action {action!r} at microversion {v[0]}.{v[1]}: one of "
                    f"{', '.join(sorted(LEGACY))} (force-down from 2.11)")
    allowed = {"host", "binary"} | ({"disabled_reason"} if action == "disable-log-reason" else set()) | (
        {"forced_down"} if action == "force-down" else set())
    unexpected = sorted(set(data) - allowed)
    if unexpected:
        raise Fault(400, f"Invalid input for {action}: additional properties are not allowed "
                    f"({unexpected[0]!r} was unexpected)")
    row = await by_host(db, data)
    host = row["name"]
    out: dict[str, Any] = {"host": host, "binary": BINARY}
    if action == "force-down":
        forced = data.get("forced_down")
        if not isinstance(forced, bool):
            raise Fault(400, f"Invalid input for field/attribute forced_down. Value: {forced!r}. Not a boolean")
        await set_forced_down(db, host, forced)
        out["forced_down"] = forced
        return reply(request, {"service": out})
    reason = data.get("disabled_reason")
    if action == "disable-log-reason" and (not isinstance(reason, str) or not 1 <= len(reason) <= 255):
        raise Fault(400, f"Invalid input for field/attribute disabled_reason. Value: {reason!r}. "
                    "A string of 1 to 255 characters is required")
    await set_status(db, host, action == "enable", reason)
    out["status"] = "enabled" if action == "enable" else "disabled"
    if action == "disable-log-reason":
        out["disabled_reason"] = reason
    return reply(request, {"service": out})
