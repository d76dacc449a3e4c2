"""The live event stream (Server-Sent Events) and the recent events as JSON.

``GET /v1/events/stream`` sends one SSE event per host state change or evacuation step
(services.api.event_payload), ``id:`` being the message id, so a reconnecting
EventSource resumes after the last one it saw (Last-Event-ID) while that is still in
the ring. A comment line every ``api_sse_keepalive`` seconds keeps proxies from closing
an idle stream. A client that cannot keep up gets ``event: lagged`` and the stream ends:
it reconnects and re-reads the state.

EventSource cannot send an Authorization header, so the stream also takes the token as
``?access_token=`` (a reader token is enough). Only this route does: a token in a URL can
end up in proxy logs and browser history, and the API itself keeps no access log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from services.api.access import READER, READER_HEADER_OR_QUERY
from services.api.event_hub import CLOSED, LAGGED, EventHub, Subscriber
from services.api.event_payload import TYPES

router = APIRouter(prefix="/v1/events", tags=["events"])

TYPES_QUERY = Query(None, max_length=2000, description="Only these message types, comma-separated (default: all of "
                    + ", ".join(TYPES) + ")")


def parse_types(raw: str | None) -> frozenset[str] | None:
    if raw is None or not raw.strip():
        return None
    wanted = {t.strip() for t in raw.split(",") if t.strip()}
    unknown = sorted(wanted - set(TYPES))
    if unknown:
        raise HTTPException(422, {"message": f"types: {unknown[0]!r} is not a streamed type; valid: "
                                  + ", ".join(TYPES), "field": "types"})
    return frozenset(wanted)


def sse(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def frames(request: Request, hub: EventHub, sub: Subscriber, keepalive: float) -> AsyncIterator[str]:
    try:
        yield f"retry: 2000\n: evacuate event stream; consumer {hub.state}\n\n"
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=keepalive)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keepalive\n\n"
                continue
            if event is CLOSED:
                yield "event: closed\ndata: {\"closed\": true, \"message\": \"the API is stopping\"}\n\n"
                return
            if event is LAGGED:
                note = {"lagged": True, "queue": hub.queue_size,
                        "message": "this client fell behind and was dropped; reconnect and re-read the state"}
                yield f"event: lagged\ndata: {json.dumps(note)}\n\n"
                return
            yield sse(event)
    finally:
        hub.unsubscribe(sub)


@router.get("/stream", dependencies=[READER_HEADER_OR_QUERY],
            summary="Live host state changes and evacuation progress (text/event-stream)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "SSE: `id:` the message id, `data:` the event as JSON"}})
async def stream(request: Request, types: str | None = TYPES_QUERY,
                 last_event_id: str | None = Header(None, max_length=100, description="Resume after this event")
                 ) -> StreamingResponse:
    hub: EventHub = request.app.state.events
    sub = hub.subscribe(parse_types(types), last_event_id)
    keepalive: float = request.app.state.settings.api_sse_keepalive
    return StreamingResponse(frames(request, hub, sub, keepalive), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("", dependencies=[READER], summary="The recent events (the stream's ring), oldest first")
async def recent(request: Request, after: str | None = Query(None, max_length=100,
                                                             description="Only events after this event id"),
                 types: str | None = TYPES_QUERY, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    hub: EventHub = request.app.state.events
    wanted = parse_types(types)
    events = hub.since(after) if after else list(hub.recent)
    items = [e for e in events if wanted is None or e["type"] in wanted][-limit:]
    return {"consumer": hub.state, "subscribers": len(hub.subscribers), "items": items}
