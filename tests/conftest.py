"""Real infrastructure for the process tests: a tansu broker started per test session
on a free loopback port, and a fresh PostgreSQL database per session — on the server
named by EVACUATE_DATABASE_URL (dropped afterwards), else on an embedded server."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from services.common.embedded import EmbeddedBroker, EmbeddedPostgres
from services.evacctl.stack import admin_sql, with_database

# Property tests judge logic, not speed: CI and a busy 2-core machine must not fail them
# for slow input generation or a slow example.
settings.register_profile("evacuate", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("evacuate")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("EVACUATE_DATABASE_URL", "")
    embedded = None
    if not base:
        embedded = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data").start()
        base = embedded.url
    name = f"evacuate_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_sql(base, f'CREATE DATABASE "{name}"'))
    yield with_database(base, name)
    asyncio.run(admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    if embedded:
        embedded.stop()
