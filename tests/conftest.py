"""Real infrastructure for the process tests: a tansu broker started per test session
on a free loopback port, and a fresh PostgreSQL database per session — on the server
named by EVACUATE_DATABASE_URL (dropped afterwards), else on an embedded server."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.common.embedded import EmbeddedBroker, EmbeddedPostgres


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    yield b
    b.stop()


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("EVACUATE_DATABASE_URL", "")
    embedded = None
    if not base:
        embedded = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data").start()
        base = embedded.url
    name = f"evacuate_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    yield _with_db(base, name)
    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    if embedded:
        embedded.stop()
