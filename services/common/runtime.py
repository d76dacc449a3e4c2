"""What every service process does around its own work: logging, settings, the bus
connection, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services.common.errors import ConfigError, EvacuateError
from services.common.settings import CommonSettings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("message_id", "evacuation_id", "host"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger(service).info("starting %s", service)


def require_infra(settings: CommonSettings, *, database: bool = True) -> None:
    if not settings.kafka_bootstrap:
        raise ConfigError("EVACUATE_KAFKA_BOOTSTRAP is not set (run services through `evacctl up`,"
                          " which starts an embedded broker, or point it at Kafka)")
    if database and not settings.database_url:
        raise ConfigError("EVACUATE_DATABASE_URL is not set (run services through `evacctl up`,"
                          " which starts an embedded PostgreSQL, or point it at one)")


def run(main: Callable[[], Coroutine[Any, Any, None]], settings: CommonSettings | None = None,
        service: str = "") -> None:
    """Run a service's main coroutine until it ends or a signal arrives; with settings,
    serve /healthz and /metrics on their health_port."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        if settings is not None:
            from services.common.health import serve

            await serve(settings, service)
        task = asyncio.ensure_future(main())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(runner())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except EvacuateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def retry_start(what: str, start: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """Start a client, retrying while its server is not reachable yet."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            await start()
            return
        except Exception as exc:  # noqa: BLE001 - any start failure is retried until the deadline
            if time.monotonic() > deadline:
                raise EvacuateError(f"cannot start {what}: {exc}") from exc
            logging.getLogger(__name__).warning("%s not reachable yet: %r", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def gather_forever(*coros: Awaitable[None]) -> None:
    """Run background loops together; if one dies, the service dies (and is restarted)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
