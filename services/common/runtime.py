"""What every service process does around its own work: logging, settings, the bus
connection, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from services.common.errors import ConfigError, EvacuateError
from services.common.settings import CommonSettings

# What the log line is about, set around each handled message by the consume loop
# (services.common.bus) and by a service where it knows more (the planner: the evacuation).
LOG_MESSAGE_ID: ContextVar[str | None] = ContextVar("log_message_id", default=None)
LOG_EVACUATION_ID: ContextVar[str | None] = ContextVar("log_evacuation_id", default=None)
LOG_HOST: ContextVar[str | None] = ContextVar("log_host", default=None)  # the host a message is about
CONTEXT_FIELDS = ("message_id", "evacuation_id")


class ContextFilter(logging.Filter):
    """Puts the service, its host (an executor's own; else the host of the message being
    handled) and the message being handled on every record."""

    def __init__(self, service: str, host: str = "") -> None:
        super().__init__()
        self.service, self.host = service, host

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "host"):
            record.host = self.host or LOG_HOST.get()
        for key, var in (("message_id", LOG_MESSAGE_ID), ("evacuation_id", LOG_EVACUATION_ID)):
            value = var.get()
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


@contextmanager
def log_context(message_id: str | None = None, evacuation_id: str | None = None,
                host: str | None = None) -> Iterator[None]:
    """Every line logged inside is about this message / evacuation / host."""
    # All three are set (None too) and reset afterwards: whatever a handler sets inside
    # (the planner: the evacuation it creates) ends with the message.
    tokens = [(var, var.set(value)) for var, value in ((LOG_MESSAGE_ID, message_id),
              (LOG_EVACUATION_ID, evacuation_id), (LOG_HOST, host))]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, service,
    and host / message_id / evacuation_id where known."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("service", "host", *CONTEXT_FIELDS):
            value = getattr(record, key, None)
            if value is not None and value != "":
                out[key] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """``time level logger: message [message_id=... evacuation_id=...]`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        about = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        if not about:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the annotated line
        return f"{head} [{about}]{sep}{tail}"


def setup_logging(level: str, service: str, fmt: str = "text", host: str = "") -> None:
    """Log to stderr as text (default) or one JSON object per line (EVACUATE_LOG_FORMAT=json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(service.removeprefix("services."), host))
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
