"""The dashboard: one static page and its script, served by the API, no build step.

The page itself holds no data, so it is served without a token; everything it shows
comes from the reader routes, called by its script with the token. The token is given
in the URL *fragment* (``/dashboard#token=...``), which a browser never sends to a
server (nor in a Referer), and is kept in the tab's sessionStorage; the script removes
it from the address bar. Only the event stream carries it in a query string, because
EventSource cannot set headers (services.api.events).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
HEADERS = {
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


@router.get("/dashboard")
async def page() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html", headers=HEADERS)


@router.get("/dashboard/{name}")
async def asset(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404, f"no dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
