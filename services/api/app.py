"""The FastAPI application: lifespan (migrations, pool, producer + outbox relay), error
handlers that turn bad input into 4xx (never a 500), /healthz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api import commands, dashboard, events, openstack, reads, templates
from services.api.auth import TokenBook
from services.api.event_hub import EventHub, consume
from services.common.bus import Producer, ensure_topics
from services.common.db import connect_pool, migrate
from services.common.errors import InfraError
from services.common.outbox import OutboxRelay
from services.common.runtime import retry_start
from services.common.settings import ApiSettings

log = logging.getLogger("services.api")
SOURCE = "api"

REQUESTS = Counter("evacuate_api_requests_total", "API requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("evacuate_api_request_seconds", "API request latency", ["method", "route"])


async def run_bus(app: FastAPI) -> None:
    """Start the producer whenever the broker is reachable, then relay the outbox for ever.
    Commands are accepted meanwhile: they wait in the outbox."""
    s: ApiSettings = app.state.settings
    producer: Producer = app.state.producer
    while True:
        try:
            await retry_start("broker", lambda: ensure_topics(s.kafka_bootstrap))
            await retry_start("producer", producer.start)
            break
        except Exception as exc:  # noqa: BLE001 - keep serving reads; try the broker again
            log.warning("broker not usable yet: %r", exc)
    app.state.producer_started = True
    await OutboxRelay(app.state.pool, producer, SOURCE).run()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    s: ApiSettings = app.state.settings
    async def migrate_db() -> None:
        await migrate(s.database_url)

    await retry_start("database", migrate_db)
    app.state.pool = await connect_pool(s.database_url, max_size=8)
    app.state.producer = Producer(s.kafka_bootstrap, SOURCE)
    app.state.producer_started = False
    bus = asyncio.create_task(run_bus(app))
    stream = asyncio.create_task(consume(app.state.events, s.kafka_bootstrap, s.fetch_max_wait_ms))
    try:
        yield
    finally:
        bus.cancel()
        stream.cancel()
        await asyncio.gather(bus, stream, return_exceptions=True)
        if app.state.producer_started:
            await app.state.producer.stop()
        try:  # the relay's LISTEN connection is never given back: do not wait for it for ever
            await asyncio.wait_for(app.state.pool.close(), timeout=2.0)
        except TimeoutError:
            app.state.pool.terminate()


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, "detail": extra.pop("detail", message), **extra}, status_code=status)


def field_name(loc: Any) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = [{"loc": list(e["loc"]), "field": field_name(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()]
    first = errs[0] if errs else {"field": "body", "msg": "invalid request"}
    return error(422, f"{first['field']}: {first['msg']}", detail=errs)


async def on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict):
        resp = error(exc.status_code, str(detail.get("message", "")), detail=detail,
                     **{k: v for k, v in detail.items() if k != "message"})
    else:
        resp = error(exc.status_code, str(detail))
    for k, v in (exc.headers or {}).items():
        resp.headers[k] = v
    return resp


async def on_data_error(_: Request, exc: Exception) -> JSONResponse:
    return error(422, f"invalid value: {exc}")


async def on_integrity(_: Request, exc: Exception) -> JSONResponse:
    return error(409, f"conflicts with stored state: {exc}")


async def on_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %r", exc)
    return error(503, "the database is not reachable; try again")


def create_app(settings: ApiSettings, tokens: TokenBook | None = None) -> FastAPI:
    app = FastAPI(title="Evacuate status API", version="1",
                  description="Hosts, instances and evacuations; operator commands published as events.",
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.tokens = tokens if tokens is not None else TokenBook.parse(settings.api_tokens)
    app.state.events = EventHub(queue_size=settings.api_sse_queue)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(asyncpg.DataError, on_data_error)
    app.add_exception_handler(asyncpg.IntegrityConstraintViolationError, on_integrity)
    for exc in (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, InfraError, OSError):
        app.add_exception_handler(exc, on_unavailable)
    app.include_router(reads.router)
    app.include_router(commands.router)
    app.include_router(templates.router)
    app.include_router(events.router)
    app.include_router(dashboard.router)
    app.add_exception_handler(openstack.Fault, openstack.on_fault)  # only the OpenStack routes raise it
    for router in openstack.ROUTERS:
        app.include_router(router)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["health"], summary="Liveness plus database and broker reachability (503 if not)")
    async def healthz(request: Request) -> JSONResponse:
        checks = {"database": await check_database(request.app.state.pool),
                  "broker": await check_broker(settings.kafka_bootstrap)}
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def check_database(pool: asyncpg.Pool) -> str:
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=2.0)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; report it
        return f"unreachable: {exc!r}"


async def check_broker(bootstrap: str) -> str:
    problems = []
    for server in [s.strip() for s in bootstrap.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host or "localhost", int(port)), timeout=2.0)
            writer.close()
            return "ok"
        except (OSError, ValueError, TimeoutError) as exc:
            problems.append(f"{server}: {exc!r}")
    return "unreachable: " + ("; ".join(problems) or "no bootstrap servers configured")
