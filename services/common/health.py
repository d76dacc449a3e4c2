"""/healthz and /metrics for services that are not HTTP servers themselves (detector,
planner, templater, executor): a tiny HTTP/1.1 responder on ``EVACUATE_HEALTH_PORT``.

/healthz answers 200 when the process runs and its broker (and database, where it has
one) accept TCP connections, else 503 with what is unreachable; /metrics is the
Prometheus text format of this process's metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.settings import CommonSettings

log = logging.getLogger(__name__)


def endpoints(settings: CommonSettings) -> dict[str, tuple[str, int]]:
    """The TCP endpoints this service depends on, by name."""
    out: dict[str, tuple[str, int]] = {}
    if settings.kafka_bootstrap:
        host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
        out["broker"] = (host or "127.0.0.1", int(port or 9092))
    if settings.database_url:
        parts = urlsplit(settings.database_url)
        if parts.hostname:  # a unix-socket URL has none: nothing to probe over TCP
            out["database"] = (parts.hostname, parts.port or 5432)
    return out


async def _reachable(host: str, port: int) -> str | None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
        writer.close()
        return None
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port}: {exc or type(exc).__name__}"


async def check(settings: CommonSettings) -> tuple[bool, dict[str, str]]:
    results = {name: await _reachable(*addr) for name, addr in endpoints(settings).items()}
    return all(v is None for v in results.values()), {k: v or "ok" for k, v in results.items()}


async def serve(settings: CommonSettings, service: str) -> asyncio.Server | None:
    if not settings.health_port:
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)).strip():
                pass
            path = request.split()[1].decode() if len(request.split()) > 1 else "/"
            if path == "/healthz":
                ok, detail = await check(settings)
                body = json.dumps({"service": service, "ok": ok, **detail}).encode()
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "application/json"
            elif path == "/metrics":
                body, status, ctype = generate_latest(), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b'{"error": "not found"}', "404 Not Found", "application/json"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, IndexError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", settings.health_port)  # noqa: S104 - probes come from outside
    log.info("%s: /healthz and /metrics on port %d", service, settings.health_port)
    return server
