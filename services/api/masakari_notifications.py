"""Masakari notifications: the intake of an outside monitor's failure reports.

- ``COMPUTE_HOST`` with payload event ``STOPPED`` is a host-failure signal: a HostCommand
  ``suspect`` to the detector, which suspects the host at once but still needs a fence
  or expired storage leases before NodeDown and any evacuation. A live host's next
  heartbeat overrules the report. Its status follows what happened: ``running`` while
  the host is suspect/fencing or its evacuation runs, then ``finished`` / ``error`` /
  ``failed`` from the evacuation's outcome, or ``ignored`` once the host, still
  heartbeating, was judged up again after the report.
- ``COMPUTE_HOST`` ``STARTED``, ``INSTANCE`` and ``PROCESS`` are recorded and answered with
  status ``ignored`` and the reason: a starting host needs nothing (its heartbeats say
  so), and guests and processes on a host are the executor's, whose own heartbeat is
  what the detector watches. So is a STOPPED report about a host that is not up (the
  detector already handles it).
- A report for a host in no segment is refused (400), for a host in maintenance (409),
  a duplicate within 180 s (409); one for a host of a disabled segment is ignored.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NaiveDatetime

from services.api.access import POOL
from services.api.masakari import VERSION
from services.api.openstack_common import ADMIN, READER, Fault, int_or_uuid, json_object, member, reply, validated
from services.common.db import audit
from services.common.outbox import emit
from services.common.schemas import HostCommand

router = APIRouter(prefix="/instance-ha/v1", tags=["openstack: masakari"], dependencies=[VERSION])
SOURCE = "api"
DUPLICATE_WINDOW = timedelta(seconds=180)
EVACUATION_STATUS = {"running": "running", "completed": "finished", "completed_with_errors": "error",
                     "failed": "failed", "refused": "failed"}


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["COMPUTE_HOST", "INSTANCE", "PROCESS"]
    hostname: str = Field(min_length=1, max_length=255)
    generated_time: AwareDatetime | NaiveDatetime
    payload: dict[str, Any]


NOTIFICATIONS_SQL = """
SELECT n.*, h.state AS host_state, h.state_since AS host_state_since,
       (SELECT e.status FROM evacuations e WHERE e.source = n.hostname AND e.created_at >= n.created_at
        ORDER BY e.created_at LIMIT 1) AS evacuation_status
FROM notifications n LEFT JOIN hosts h ON h.name = n.hostname
"""


def status_of(r: asyncpg.Record) -> str:
    """A signalled host failure's status, from the evacuation (or the host) it led to."""
    if r["status"] != "new":
        return str(r["status"])
    if r["evacuation_status"] is not None:
        return EVACUATION_STATUS.get(r["evacuation_status"], "running")
    if r["host_state"] in ("suspect", "fencing", "isolated", "down"):
        return "running"
    since = r["host_state_since"]
    if r["host_state"] == "up" and since is not None and since > r["created_at"]:
        return "ignored"  # judged up again after the report: its heartbeat overruled it
    return "new"


def notification_view(r: asyncpg.Record, v: tuple[int, int], one: bool = False) -> dict[str, Any]:
    status = status_of(r)
    view: dict[str, Any] = {
        "id": r["id"], "notification_uuid": str(r["uuid"]), "type": r["type"], "hostname": r["hostname"],
        "generated_time": r["generated_time"].isoformat(), "payload": r["payload"], "status": status,
        "source_host_uuid": str(r["source_host_uuid"]) if r["source_host_uuid"] else None,
        "failover_segment_uuid": str(r["segment_uuid"]) if r["segment_uuid"] else None,
        "message": r["message"], "created_at": r["created_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat() if r["updated_at"] else None, "deleted": False,
    }
    if one and v >= (1, 1):
        view["recovery_workflow_details"] = [{
            "name": "host-failure" if r["signal_id"] else "none", "state": status,
            "progress": 1.0 if status in ("finished", "error", "failed", "ignored") else 0.5,
            "progress_details": [{"timestamp": r["created_at"].isoformat(), "message": r["message"],
                                  "progress": 0.0}],
        }]
    return view


async def fetch(db: asyncpg.Pool, notification_id: str) -> asyncpg.Record:
    rid, ruuid = int_or_uuid(notification_id)
    row = await db.fetchrow(NOTIFICATIONS_SQL + " WHERE n.id = $1 OR n.uuid = $2::uuid", rid, ruuid)
    if row is None:
        raise Fault(404, f"No notification with id {notification_id}.")
    return row


def decide(body: NotificationIn, segment_enabled: bool, host_state: str) -> tuple[bool, str]:
    """(send a suspect signal?, what the notification does), or Fault 400 for a bad payload."""
    event = body.payload.get("event")
    if body.type == "COMPUTE_HOST":
        if not isinstance(event, str) or event.upper() not in ("STARTED", "STOPPED"):
            raise Fault(400, f"Invalid input for payload: a COMPUTE_HOST notification needs event STARTED or "
                        f"STOPPED, got {event!r}")
        if event.upper() == "STARTED":
            return False, "host started: nothing to do, the detector sees its heartbeats"
        if not segment_enabled:
            return False, "the host's failover segment is disabled: no recovery"
        if host_state != "up":
            return False, f"the host is already {host_state}: the failure detector is handling it"
        return True, ("host failure reported: the detector suspects the host; it is evacuated only once fenced "
                      "or its storage leases expired, and not at all if its heartbeats resume")
    if body.type == "INSTANCE":
        return False, ("instance failures are not recovered here: the executor owns its guests and the detector "
                       "watches the executor's heartbeat")
    return False, ("process failures are not recovered here: the executor's own heartbeat is the process the "
                   "detector watches")


@router.post("/notifications", dependencies=[ADMIN], summary="Masakari: report a failure (COMPUTE_HOST STOPPED "
             "makes the detector suspect the host; INSTANCE and PROCESS are recorded and ignored)")
async def create(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    body = validated(NotificationIn, member(await json_object(request), "notification"), "notification")
    generated = body.generated_time if body.generated_time.tzinfo else body.generated_time.astimezone()
    async with db.acquire() as conn, conn.transaction():
        host = await conn.fetchrow(
            "SELECT sh.uuid, s.uuid AS segment_uuid, s.enabled, h.state FROM segment_hosts sh"
            " JOIN failover_segments s ON s.id = sh.segment_id JOIN hosts h ON h.name = sh.name"
            " WHERE sh.name = $1 FOR UPDATE OF sh", body.hostname)
        if host is None:
            raise Fault(400, f"Host with name {body.hostname} could not be found: add it to a failover segment first")
        if host["state"] == "maintenance":
            raise Fault(409, f"Notification received from host {body.hostname} of type {body.type!r} is ignored "
                        "as the host is already under maintenance.")
        if await conn.fetchval(
                "SELECT 1 FROM notifications WHERE hostname = $1 AND type = $2 AND payload = $3::jsonb"
                " AND generated_time BETWEEN $4 AND $5", body.hostname, body.type, body.payload,
                generated - DUPLICATE_WINDOW, generated + DUPLICATE_WINDOW):
            raise Fault(409, f"Notification received from host {body.hostname} of type {body.type!r} is a duplicate "
                        f"of one generated within {DUPLICATE_WINDOW.seconds} s.")
        signal, message = decide(body, host["enabled"], host["state"])
        nid = uuid.uuid4()
        signal_id = None
        if signal:
            env = await emit(conn, HostCommand(host=body.hostname, command="suspect",
                                               requested_by=f"masakari notification {nid}"), SOURCE)
            signal_id = uuid.UUID(env.id)
        await conn.execute(
            "INSERT INTO notifications (uuid, type, hostname, generated_time, payload, status, message,"
            " source_host_uuid, segment_uuid, signal_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            nid, body.type, body.hostname, generated, body.payload, "new" if signal else "ignored", message,
            host["uuid"], host["segment_uuid"], signal_id)
        await audit(conn, "masakari-notification", f"{body.type} from {body.hostname}: {message}",
                    host=body.hostname, data={"notification": str(nid), "payload": body.payload})
    return reply(request, {"notification": notification_view(await fetch(db, str(nid)), v)}, 202)


@router.get("/notifications", dependencies=[READER], summary="Masakari: notifications, newest first")
async def list_notifications(request: Request, v: tuple[int, int] = VERSION, db: asyncpg.Pool = POOL) -> Response:
    q = request.query_params
    since: datetime | None = None
    if q.get("generated-since"):
        try:
            since = datetime.fromisoformat(q["generated-since"])
        except ValueError:
            raise Fault(400, f"Invalid input for generated-since: {q['generated-since']!r} is not a time") from None
        since = since if since.tzinfo else since.astimezone()
    source: uuid.UUID | None = None
    if q.get("source_host_uuid"):
        _, text = int_or_uuid(q["source_host_uuid"])
        if text is None:
            raise Fault(400, f"Invalid input for source_host_uuid: {q['source_host_uuid']!r} is not a uuid")
        source = uuid.UUID(text)
    sort_dir = q.get("sort_dir", "desc").lower()
    if sort_dir not in ("asc", "desc"):
        raise Fault(400, f"Invalid input for sort_dir: {sort_dir!r}, one of asc, desc")
    rows = await db.fetch(
        NOTIFICATIONS_SQL + " WHERE ($1::text IS NULL OR n.type = $1) AND ($2::uuid IS NULL OR n.source_host_uuid = $2)"
        f" AND ($3::timestamptz IS NULL OR n.generated_time >= $3) ORDER BY n.created_at {sort_dir}, n.id {sort_dir}",
        q.get("type"), source, since)
    views = [notification_view(r, v) for r in rows]
    if q.get("status"):
        views = [n for n in views if n["status"] == q["status"]]
    return reply(request, {"notifications": views})


@router.get("/notifications/{notification_id}", dependencies=[READER], summary="Masakari: one notification")
async def get(request: Request, notification_id: str, v: tuple[int, int] = VERSION,
              db: asyncpg.Pool = POOL) -> Response:
    return reply(request, {"notification": notification_view(await fetch(db, notification_id), v, one=True)})
