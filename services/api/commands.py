"""Operator commands (admin only). Each validates against PostgreSQL, then changes
state and/or writes the event it publishes to the outbox, in one transaction. The API
never calls another service: the planner acts on the EvacuationRequested it reads."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from services.api.access import ADMIN, POOL
from services.api.reads import fetch_host
from services.api.templates import load_template, template_problem
from services.common.db import audit
from services.common.outbox import emit
from services.common.schemas import EvacuationRequested, HostCommand
from services.templater.template import TemplateError, parse, validate_values

router = APIRouter(prefix="/v1", dependencies=[ADMIN], tags=["commands"])
SOURCE = "api"
EVACUABLE_STATES = ("down", "fencing", "isolated")  # the planner refuses a manual evacuation of any other


class EvacuateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str | None = Field(None, min_length=1, max_length=255, description="Put every instance on this host")
    instances: list[uuid.UUID] = Field(default_factory=list, max_length=10_000,
                                       description="Only these instances, even with HA off (default: every HA "
                                                   "instance of the host)")
    leave_stopped: bool = Field(False, description="Rebuild the instances stopped, whatever their power state was")


class Accepted(BaseModel):
    message_id: str = Field(description="Id of the EvacuationRequested; the evacuation's trigger_id")
    host: str
    target: str | None
    instances: list[str]


@router.post("/hosts/{name}/evacuate", status_code=202, response_model=Accepted,
             summary="Request a manual evacuation of a host that is down, fencing or isolated")
async def evacuate(name: str, body: EvacuateIn | None = None, db: asyncpg.Pool = POOL) -> Accepted:
    return await request_evacuation(db, name, body or EvacuateIn.model_validate({}), "api:admin")


async def request_evacuation(db: asyncpg.Pool, name: str, body: EvacuateIn, requested_by: str) -> Accepted:
    """The one path of every manual evacuation (this API and the Nova front door)."""
    async with db.acquire() as conn, conn.transaction():
        host = await conn.fetchrow("SELECT name, state, state_reason FROM hosts WHERE name = $1 FOR SHARE", name)
        if host is None:
            raise HTTPException(404, f"unknown host {name!r}")
        if host["state"] not in EVACUABLE_STATES:
            why = host["state_reason"] or "no reason recorded"
            raise HTTPException(409, f"host is {host['state']}: {name} may still run its VMs; only a host that is "
                                f"{', '.join(EVACUABLE_STATES)} can be evacuated ({why})")
        if body.target is not None:
            await check_target(conn, name, body.target)
        wanted = sorted({str(u) for u in body.instances})
        if wanted:
            found = {str(r["uuid"]) for r in await conn.fetch(
                "SELECT uuid FROM instances WHERE host = $1 AND uuid = ANY($2::uuid[])", name, wanted)}
            missing = [u for u in wanted if u not in found]
            if missing:
                raise HTTPException(409, f"instance {missing[0]} is not on host {name}")
        running = await conn.fetchval(
            "SELECT id FROM evacuations WHERE source = $1 AND status = 'running' LIMIT 1", name)
        if running is not None:
            raise HTTPException(409, f"an evacuation of {name} is already running: {running}")
        env = await emit(conn, EvacuationRequested(host=name, target=body.target, instances=tuple(wanted),
                                                   requested_by=requested_by, leave_stopped=body.leave_stopped),
                         SOURCE)
        await audit(conn, "evacuation-requested", f"manual evacuation of {name} requested"
                    + (f" to {body.target}" if body.target else ""), host=name,
                    data={"message_id": env.id, "target": body.target, "instances": wanted,
                          "leave_stopped": body.leave_stopped, "requested_by": requested_by})
    return Accepted(message_id=env.id, host=name, target=body.target, instances=wanted)


async def check_target(conn: asyncpg.Connection, source: str, target: str) -> None:
    if target == source:
        raise HTTPException(409, f"target {target!r} is the host being evacuated")
    row = await conn.fetchrow("SELECT state, enabled FROM hosts WHERE name = $1", target)
    if row is None:
        raise HTTPException(409, f"target {target!r} is not a known host")
    if row["state"] != "up":
        raise HTTPException(409, f"target {target!r} is {row['state']}, not up")
    if not row["enabled"]:
        raise HTTPException(409, f"target {target!r} is disabled")


class HostAction(StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"
    RESERVE = "reserve"
    UNRESERVE = "unreserve"
    MAINTENANCE = "maintenance"
    CONFIRM_OFF = "confirm-off"
    FORCE_DOWN = "force-down"


# Commands for the failure detector, sent as HostCommand, and the states they apply in.
DETECTOR_COMMANDS: dict[HostAction, tuple[str, tuple[str, ...]]] = {
    HostAction.MAINTENANCE: ("maintenance", ("up", "suspect", "isolated", "returning")),
    HostAction.CONFIRM_OFF: ("confirm_off", ("suspect", "fencing", "isolated")),
    HostAction.FORCE_DOWN: ("force_down", ("isolated",)),
    HostAction.ENABLE: ("enable", ()),  # also ends maintenance; harmless in any other state
}


FLAG_CHANGES: dict[HostAction, tuple[str, bool]] = {
    HostAction.ENABLE: ("enabled", True),
    HostAction.DISABLE: ("enabled", False),
    HostAction.RESERVE: ("reserved", True),
    HostAction.UNRESERVE: ("reserved", False),
}


@router.post("/hosts/{name}/{action}",
             summary="Enable, disable, reserve or unreserve a host as a target; put it into maintenance; confirm it is"
                     " powered off (the manual fence); force an isolated host down")
async def host_flag(name: str, action: HostAction, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    if action in DETECTOR_COMMANDS and action is not HostAction.ENABLE:
        return await detector_command(db, name, action)
    column, value = FLAG_CHANGES[action]
    async with db.acquire() as conn, conn.transaction():
        before = await conn.fetchval(f"SELECT {column} FROM hosts WHERE name = $1 FOR UPDATE", name)
        if before is None:
            raise HTTPException(404, f"unknown host {name!r}")
        if before != value:
            await conn.execute(f"UPDATE hosts SET {column} = $2 WHERE name = $1", name, value)
            await audit(conn, f"host-{action}d", f"host {name} {action}d by an operator", host=name,
                        data={column: value})
        if action is HostAction.ENABLE:
            await emit(conn, HostCommand(host=name, command="enable", requested_by="api:admin"), SOURCE)
        return await fetch_host(conn, name)


async def detector_command(db: asyncpg.Pool, name: str, action: HostAction) -> dict[str, Any]:
    command, states = DETECTOR_COMMANDS[action]
    async with db.acquire() as conn, conn.transaction():
        state = await conn.fetchval("SELECT state FROM hosts WHERE name = $1 FOR UPDATE", name)
        if state is None:
            raise HTTPException(404, f"unknown host {name!r}")
        if state not in states:
            raise HTTPException(409, f"host {name} is {state}: {action} applies only to a host that is "
                                f"{' or '.join(states)}")
        env = await emit(conn, HostCommand(host=name, command=command, requested_by="api:admin"), SOURCE)  # type: ignore[arg-type]
        await audit(conn, f"host-{action}", f"operator: {action} {name} (was {state})", host=name,
                    data={"message_id": env.id})
        return await fetch_host(conn, name)


class InstanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ha: bool | None = Field(None, description="Evacuate this instance when its host fails")
    priority: int | None = Field(None, ge=0, le=1000, description="Higher is placed first")
    template: str | None = Field(None, max_length=200,
                                 description="Server template name or name@version; null removes it")
    metadata: dict[str, str] | None = Field(None, description="Values of the template's metadata items")


@router.put("/instances/{instance_uuid}", summary="Set an instance's HA policy, priority, template and metadata")
async def update_instance(instance_uuid: uuid.UUID, body: InstanceIn, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    async with db.acquire() as conn, conn.transaction():
        inst = await conn.fetchrow("SELECT * FROM instances WHERE uuid = $1 FOR UPDATE", instance_uuid)
        if inst is None:
            raise HTTPException(404, f"unknown instance {instance_uuid}")
        changes: dict[str, Any] = {}
        if body.ha is not None:
            changes["ha"] = body.ha
        if body.priority is not None:
            changes["priority"] = body.priority
        if "template" in body.model_fields_set:
            changes["template"] = body.template or None
        if body.metadata is not None:
            changes["metadata"] = body.metadata
        template = changes.get("template", inst["template"])
        metadata = changes.get("metadata", dict(inst["metadata"] or {}))
        if template and ("template" in changes or "metadata" in changes):
            row = await load_template(conn, template)
            if row is None:
                raise HTTPException(422, {"message": f"template: no server template {template!r} is registered",
                                          "item": "template"})
            # 'hostname' overrides the HOSTNAME built-in (services.templater) and is no template item
            values = {k: v for k, v in metadata.items() if k != "hostname"}
            try:
                validate_values(parse(row["text"]), values)
            except TemplateError as exc:
                raise template_problem(exc, f"metadata for template {template}") from None
        if changes:
            sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
            await conn.execute(f"UPDATE instances SET {sets} WHERE uuid = $1", instance_uuid, *changes.values())
            await audit(conn, "instance-updated", f"{inst['name']}: {', '.join(sorted(changes))} set by an operator",
                        host=inst["host"], data={"instance": str(instance_uuid), **changes})
        row = await conn.fetchrow(
            "SELECT uuid, name, host, ha, priority, template, metadata FROM instances WHERE uuid = $1", instance_uuid)
    return dict(row)
