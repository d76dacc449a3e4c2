"""The asyncpg pool and the SQL migrations (services/common/migrations/NNN_name.sql)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from services.common.errors import InfraError

log = logging.getLogger(__name__)

MIGRATION_LOCK = 72_410_001  # pg_advisory_lock key: one migrator at a time

# The database is away (restarting, failing over, unreachable), not a bad statement:
# retry later, never give up on (or dead-letter) the work.
# InternalClientError: asyncpg's "unexpected" client state, seen on connections that a
# restarting PostgreSQL cut mid-operation (the chaos harness met it first).
DB_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError, OSError, InfraError,
)

T = TypeVar("T")


async def close_pool(pool: asyncpg.Pool, timeout: float = 5.0) -> None:
    """Close a pool at shutdown without hanging on a connection someone still holds."""
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout)
    except TimeoutError:
        log.warning("database pool did not close within %.0f s: terminating its connections", timeout)
        pool.terminate()


async def until_done(what: str, fn: Callable[[], Awaitable[T]], max_delay: float = 5.0) -> T:
    """Run `fn` until it does not fail for want of the database, with backoff."""
    delay = 0.2
    while True:
        try:
            return await fn()
        except DB_TRANSIENT as exc:
            log.warning("%s: database unavailable, retrying in %.1f s: %r", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect_pool(url: str, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection)
    except (OSError, asyncpg.PostgresError) as exc:
        raise InfraError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    assert pool is not None
    return pool


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


def migrations() -> list[tuple[int, str, str]]:
    files = resources.files("services.common") / "migrations"
    out = []
    for f in sorted(files.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.name, f.read_text()))
    return out


async def migrate(url: str) -> list[str]:
    """Apply the migrations not applied yet; returns the names applied."""
    conn: asyncpg.Connection = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await conn.close()
    return applied


async def already_processed(conn: asyncpg.Connection, consumer: str, message_id: str) -> bool:
    """Record a message id for a consumer inside the caller's transaction.
    True when it was handled before (the caller then does nothing)."""
    row = await conn.fetchrow(
        "INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer, message_id,
    )
    return row is None


async def newly_processed(conn: asyncpg.Connection, consumer: str, message_ids: list[str]) -> set[str]:
    """already_processed for many messages in one statement: the ids not handled before."""
    rows = await conn.fetch(
        "INSERT INTO processed_messages (consumer, message_id) SELECT $1, unnest($2::text[])"
        " ON CONFLICT DO NOTHING RETURNING message_id", consumer, message_ids)
    return {r["message_id"] for r in rows}


_AUDIT = "INSERT INTO audit (kind, detail, host, evacuation_id, data) VALUES ($1, $2, $3, $4, $5)"


async def audit(conn: asyncpg.Connection, kind: str, detail: str, *, host: str | None = None,
                evacuation_id: Any = None, data: dict[str, Any] | None = None) -> None:
    await conn.execute(_AUDIT, kind, detail, host, evacuation_id, data or {})


async def audit_many(conn: asyncpg.Connection, rows: list[tuple[str, str, str | None, Any, dict[str, Any]]]) -> None:
    """Several audit lines in one statement: (kind, detail, host, evacuation_id, data)."""
    if rows:
        await conn.executemany(_AUDIT, rows)
