"""The Nova-compatible front door, under /compute/v2.1: version documents, servers (our
instances) and their evacuate action. os-services is in nova_services.py.

An evacuate enters the same path as our own manual evacuation (commands.request_evacuation)
with the same safety rules. Microversions change the evacuate body: onSharedStorage is
required before 2.14 and refused from it; adminPass is always refused (our rebuilds keep
the disks on shared storage, as Nova refuses it for shared storage) and before 2.14 the
answer carries ``{"adminPass": null}``; force is accepted from 2.29 to 2.67 (our safety
checks on the target still apply); from 2.95 the rebuilt instance is left stopped.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.access import POOL
from services.api.commands import EVACUABLE_STATES, EvacuateIn, request_evacuation
from services.api.openstack_common import ADMIN, READER, Fault, Microversions, from_http, json_object, reply, validated

NOVA = Microversions("compute", (2, 1), (2, 95), "X-OpenStack-Nova-API-Version")
VERSION = Depends(NOVA.dependency())
UPDATED = "2013-07-23T11:33:21Z"

root = APIRouter(prefix="/compute", tags=["openstack: nova"])
router = APIRouter(prefix="/compute/v2.1", tags=["openstack: nova"], dependencies=[VERSION])

# our power state -> (status, vm_state, OS-EXT-STS:power_state)
POWER = {"running": ("ACTIVE", "active", 1), "paused": ("PAUSED", "paused", 3),
         "shutoff": ("SHUTOFF", "stopped", 4), "crashed": ("ERROR", "error", 6)}
HOST_STATUS = {"up": "UP", "maintenance": "MAINTENANCE", "returning": "UNKNOWN"}  # else DOWN


def version_doc(request: Request) -> dict[str, Any]:
    return {"id": "v2.1", "status": "CURRENT", "version": NOVA.text(NOVA.maximum),
            "min_version": NOVA.text(NOVA.minimum), "updated": UPDATED,
            "links": [{"rel": "self", "href": f"{request.base_url}compute/v2.1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


@root.get("/", summary="Nova: the API versions (no token needed)")
async def versions(request: Request) -> dict[str, Any]:
    return {"versions": [version_doc(request)]}


@root.get("/v2.1", summary="Nova: the v2.1 version document (no token needed)")
@root.get("/v2.1/", include_in_schema=False)
async def version(request: Request) -> dict[str, Any]:
    return {"version": version_doc(request)}


# --- servers ---------------------------------------------------------------------------

SERVERS_SQL = """
SELECT i.uuid, i.name, i.host, i.power_state, i.vcpus, i.memory_mib, i.disk_gib, i.macs, i.ips, i.metadata,
       i.reported_at, h.state AS host_state, COALESCE(c.forced_down, false) AS forced_down,
       EXISTS (SELECT 1 FROM evacuation_items it WHERE it.instance_uuid = i.uuid AND it.status = 'pending')
         AS rebuilding
FROM instances i LEFT JOIN hosts h ON h.name = i.host LEFT JOIN compute_services c ON c.host = i.host
"""


def addresses(macs: list[str], ips: list[str]) -> dict[str, list[dict[str, Any]]]:
    # The inventory keeps MACs and the IPs it learnt apart; they pair up when every NIC has one.
    paired = list(zip(macs, ips, strict=True)) if len(macs) == len(ips) else [(None, ip) for ip in ips]
    out = []
    for mac, ip in paired:
        entry: dict[str, Any] = {"addr": ip, "version": 6 if ":" in ip else 4, "OS-EXT-IPS:type": "fixed"}
        if mac:
            entry["OS-EXT-IPS-MAC:mac_addr"] = mac
        out.append(entry)
    return {"evacuate": out} if out else {}


def server_view(request: Request, r: asyncpg.Record, v: tuple[int, int]) -> dict[str, Any]:
    sid = str(r["uuid"])
    status, vm_state, power = POWER.get(r["power_state"], ("UNKNOWN", "error", 0))
    if r["rebuilding"]:
        status = "REBUILD"
    link = f"{request.base_url}compute/v2.1/servers/{sid}"
    flavor: dict[str, Any] = {"id": f"evacuate-{r['vcpus']}-{r['memory_mib']}-{r['disk_gib']}", "links": []}
    if v >= (2, 47):
        flavor = {"vcpus": r["vcpus"], "ram": r["memory_mib"], "disk": r["disk_gib"], "ephemeral": 0, "swap": 0,
                  "original_name": flavor["id"], "extra_specs": {}}
    at = r["reported_at"].isoformat()
    view: dict[str, Any] = {
        "id": sid, "name": r["name"], "status": status, "tenant_id": "evacuate", "user_id": "evacuate",
        "metadata": {k: str(val) for k, val in dict(r["metadata"] or {}).items()},
        "hostId": hashlib.sha224(r["host"].encode()).hexdigest(), "image": "", "flavor": flavor,
        "created": at, "updated": at, "addresses": addresses(list(r["macs"]), list(r["ips"])),
        "accessIPv4": "", "accessIPv6": "", "key_name": None, "config_drive": "", "progress": 0,
        "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}],
        "OS-EXT-STS:power_state": power, "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:task_state": "rebuild_spawning" if r["rebuilding"] else None,
        "OS-EXT-SRV-ATTR:host": r["host"], "OS-EXT-SRV-ATTR:hypervisor_hostname": r["host"],
        "OS-EXT-SRV-ATTR:instance_name": r["name"], "OS-EXT-AZ:availability_zone": "nova",
        "OS-DCF:diskConfig": "MANUAL", "security_groups": [], "os-extended-volumes:volumes_attached": [],
    }
    if v >= (2, 16):
        state = r["host_state"] or "unknown"
        view["host_status"] = "DOWN" if r["forced_down"] else HOST_STATUS.get(state, "DOWN")
    return view


async def fetch_server(db: asyncpg.Pool, server_id: str) -> asyncpg.Record:
    try:
        key = uuid.UUID(server_id)
    except ValueError:
        raise Fault(404, f"Instance {server_id} could not be found.") from None
    row = await db.fetchrow(SERVERS_SQL + " WHERE i.uuid = $1", key)
    if row is None:
        raise Fault(404, f"Instance {server_id} could not be found.")
    return row


async def list_rows(request: Request, db: asyncpg.Pool) -> list[asyncpg.Record]:
    q = request.query_params
    try:
        limit = int(q.get("limit", "1000"))
        assert 0 <= limit <= 10_000
    except (ValueError, AssertionError):
        raise Fault(400, f"limit must be an integer from 0 to 10000, got {q.get('limit')!r}") from None
    status = q.get("status")
    wanted = [k for k, (s, _, _) in POWER.items() if status and s == status.upper()]
    if status and not wanted:
        raise Fault(400, f"Invalid status value {status!r}: one of {', '.join(s for s, _, _ in POWER.values())}")
    after: tuple[str, uuid.UUID] | None = None
    if q.get("marker"):
        try:
            m = await fetch_server(db, q["marker"])
        except Fault:
            raise Fault(400, f"marker [{q['marker']}] not found") from None
        after = (m["name"], m["uuid"])
    return list(await db.fetch(
        SERVERS_SQL + " WHERE ($1::text IS NULL OR i.host = $1) AND ($2::text IS NULL OR i.power_state = $2)"
        " AND ($3::text IS NULL OR (i.name, i.uuid) > ($3, $4::uuid)) ORDER BY i.name, i.uuid LIMIT $5",
        q.get("host") or None, wanted[0] if wanted else None, after[0] if after else None,
        after[1] if after else None, limit))


@router.get("/servers/detail", dependencies=[READER], summary="Nova: servers with details (filters host, status)")
async def servers_detail(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    return reply(request, {"servers": [server_view(request, r, v) for r in await list_rows(request, db)]})


@router.get("/servers", dependencies=[READER], summary="Nova: servers (id, name, links)")
async def servers(request: Request, db: asyncpg.Pool = POOL) -> Response:
    out = []
    for r in await list_rows(request, db):
        link = f"{request.base_url}compute/v2.1/servers/{r['uuid']}"
        out.append({"id": str(r["uuid"]), "name": r["name"],
                    "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}]})
    return reply(request, {"servers": out})


@router.get("/servers/{server_id}", dependencies=[READER], summary="Nova: one server")
async def server(request: Request, server_id: str, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    return reply(request, {"server": server_view(request, await fetch_server(db, server_id), v)})


# --- the evacuate action ---------------------------------------------------------------


class EvacuateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)
    host: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:@-]+$")
    adminPass: str | None = None
    onSharedStorage: bool | None = None
    force: bool | None = None


def evacuate_fields(v: tuple[int, int]) -> set[str]:
    allowed = {"host", "adminPass"}
    if v < (2, 14):
        allowed.add("onSharedStorage")
    if (2, 29) <= v < (2, 68):
        allowed.add("force")
    return allowed


def check_evacuate(data: Any, v: tuple[int, int]) -> EvacuateBody:
    """Nova's evacuate schema at microversion `v`, then what our rebuilds can do."""
    if not isinstance(data, dict):
        raise Fault(400, f"Invalid input for field/attribute evacuate. Value: {data!r}. It is not an object")
    unexpected = sorted(set(data) - evacuate_fields(v))
    if unexpected:
        raise Fault(400, f"Invalid input for field/attribute evacuate at microversion {NOVA.text(v)}. Additional "
                    f"properties are not allowed ({unexpected[0]!r} was unexpected)")
    if v < (2, 14) and "onSharedStorage" not in data:
        raise Fault(400, "Invalid input for field/attribute evacuate. 'onSharedStorage' is a required property "
                    "before microversion 2.14")
    body = validated(EvacuateBody, data, "evacuate")
    if body.onSharedStorage is False:
        raise Fault(400, "onSharedStorage is false, but this service rebuilds instances only from their disks on "
                    "shared storage: send onSharedStorage true")
    if "adminPass" in data:
        raise Fault(400, "admin password can't be changed on existing disk: an evacuation here rebuilds the "
                    "instance from its disks on shared storage, keeping its password")
    if body.force and body.host is None:
        raise Fault(400, "Can't force to a non-provided destination")
    return body


@router.post("/servers/{server_id}/action", dependencies=[ADMIN], summary="Nova: a server action (evacuate only)")
async def action(request: Request, server_id: str, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    data = await json_object(request)
    if len(data) != 1:
        raise Fault(400, f"A server action body holds exactly one action, got {sorted(data) or 'none'}")
    name, args = next(iter(data.items()))
    if name != "evacuate":
        raise Fault(400, f"There is no such action: {name}. This service supports only 'evacuate'")
    body = check_evacuate(args, v)
    inst = await fetch_server(db, server_id)
    source = inst["host"]
    if inst["host_state"] not in EVACUABLE_STATES:
        raise Fault(409, f"Cannot 'evacuate' instance {server_id} while its host {source} is "
                    f"{inst['host_state'] or 'unknown'}: Compute service of {source} is still in use. Only a host "
                    f"that is {', '.join(EVACUABLE_STATES)} can be evacuated (force it down once it is off)")
    if body.host is not None:
        if body.host == source:
            raise Fault(400, f"The target host {body.host} can't be the same one as the instance's host")
        if await db.fetchval("SELECT 1 FROM hosts WHERE name = $1", body.host) is None:
            raise Fault(400, f"Compute host {body.host} could not be found: no such host")
    row = await db.fetchrow("SELECT evacuable, not_evacuable_reason FROM instances WHERE uuid = $1", inst["uuid"])
    if row is not None and not row["evacuable"]:
        why = row["not_evacuable_reason"] or "its disks are not on shared storage"
        raise Fault(409, f"Instance {server_id} cannot be evacuated: {why}")
    try:
        await request_evacuation(db, source, EvacuateIn(target=body.host, instances=[inst["uuid"]],
                                                        leave_stopped=v >= (2, 95)),
                                 f"nova-api:evacuate@{NOVA.text(v)}")
    except HTTPException as exc:
        raise from_http(exc) from None
    return reply(request, {"adminPass": None} if v < (2, 14) else None)
