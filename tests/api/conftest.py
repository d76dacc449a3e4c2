"""The API over real parts: its own fresh database (on the server of the session's
``database_url``), the session's broker, seeded hosts/instances/evacuations; the app
in-process (httpx.ASGITransport, lifespan run by hand) or as a real uvicorn process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from services.api.app import create_app, lifespan
from services.common.db import migrate
from services.common.embedded import EmbeddedBroker, free_port, wait_port
from services.common.settings import ApiSettings

ADMIN = "admin-token-0123456789"
READER = "reader-token-0123456789"
TOKENS = f"admin:{ADMIN},reader:{READER}"

VM_DOWN_1 = "11111111-1111-4111-8111-111111111111"
VM_DOWN_2 = "11111111-1111-4111-8111-111111111112"
VM_UP = "22222222-2222-4222-8222-222222222221"
VM_FREE = "33333333-3333-4333-8333-333333333331"  # its HA settings are changed by the tests
EVAC_DONE = "44444444-4444-4444-8444-444444444441"
ITEM_DONE = "44444444-4444-4444-8444-444444444442"
TRIGGER_DONE = "44444444-4444-4444-8444-444444444443"

HOSTS = [  # name, state, reason, enabled, reserved
    ("up1", "up", "", True, False),
    ("up2", "up", "", True, False),
    ("down1", "down", "fenced by process", True, False),
    ("down2", "down", "fenced by process", True, False),
    ("isolated1", "isolated", "storage heartbeat still written", True, False),
    ("suspect1", "suspect", "3 heartbeats missed", True, False),
    ("off1", "up", "", False, False),
    ("flags1", "up", "", True, False),
    ("flags2", "up", "", True, False),
    ("down3", "down", "fenced by process", True, False),
    ("down4", "down", "fenced by process", True, False),
    ("old1", "down", "fenced by process", True, False),
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def domain_xml(name: str, uid: str) -> str:
    return f"<domain type='test'><name>{name}</name><uuid>{uid}</uuid></domain>"


async def seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        for name, state, reason, enabled, reserved in HOSTS:
            await conn.execute(
                "INSERT INTO hosts (name, state, state_reason, enabled, reserved, vcpus, memory_mib, disk_gib,"
                " last_heartbeat, detector) VALUES ($1, $2, $3, $4, $5, 32, 65536, 500, now(), $6)",
                name, state, reason, enabled, reserved, {"state": state})
        for uid, name, host, ha in ((VM_DOWN_1, "vm-a", "down1", True), (VM_DOWN_2, "vm-b", "down1", True),
                                    (VM_UP, "vm-c", "up1", False), (VM_FREE, "vm-d", "up2", True)):
            await conn.execute(
                "INSERT INTO instances (uuid, name, host, power_state, vcpus, memory_mib, xml, reported_at, ha)"
                " VALUES ($1, $2, $3, 'running', 2, 2048, $4, now(), $5)",
                uuid.UUID(uid), name, host, domain_xml(name, uid), ha)
        await conn.execute(
            "INSERT INTO evacuations (id, source, trigger, trigger_id, status, reason, completed_at)"
            " VALUES ($1, 'old1', 'NodeDown', $2, 'completed', 'NodeDown: fenced', now())",
            uuid.UUID(EVAC_DONE), uuid.UUID(TRIGGER_DONE))
        steps = [{"name": "define", "ok": True, "seconds": 0.05, "detail": ""}]
        await conn.execute(
            "INSERT INTO evacuation_items (id, evacuation_id, instance_uuid, instance_name, source, target, attempt,"
            " status, reason, steps, finished_at) VALUES ($1, $2, $3, 'vm-old', 'old1', 'up1', 1, 'done',"
            " 'most free memory; rebuilt on up1', $4, now())",
            uuid.UUID(ITEM_DONE), uuid.UUID(EVAC_DONE), uuid.uuid4(), steps)
        for kind, detail in (("placement", "vm-old: placed: most free memory"),
                             ("rebuild-done", "vm-old rebuilt on up1, running"),
                             ("evacuation-closed", "completed: 1 rebuilt, 0 not")):
            await conn.execute("INSERT INTO audit (kind, detail, host, evacuation_id) VALUES ($1, $2, 'old1', $3)",
                               kind, detail, uuid.UUID(EVAC_DONE))
    finally:
        await conn.close()


async def on_server(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def api_database(database_url: str) -> Iterator[str]:
    """A database of its own, so the seeded hosts never meet other tests' hosts."""
    name = f"evacuate_api_{uuid.uuid4().hex[:10]}"
    asyncio.run(on_server(database_url, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(database_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    asyncio.run(migrate(url))
    asyncio.run(seed(url))
    yield url
    asyncio.run(on_server(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def api_settings(api_database: str, broker: EmbeddedBroker) -> ApiSettings:
    return ApiSettings(kafka_bootstrap=broker.bootstrap, database_url=api_database, api_tokens=TOKENS,
                       fetch_max_wait_ms=10)


@pytest.fixture(scope="session")
async def client(api_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings)
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                base_url="http://api") as c:
        yield c


@pytest.fixture(scope="session")
def api_server(api_settings: ApiSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m services.api`` as a real process; yields its URL."""
    port = free_port()
    env = dict(os.environ, EVACUATE_DATABASE_URL=api_settings.database_url,
               EVACUATE_KAFKA_BOOTSTRAP=api_settings.kafka_bootstrap, EVACUATE_API_TOKENS=TOKENS,
               EVACUATE_API_PORT=str(port), EVACUATE_API_HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    log_path = Path(tmp_path_factory.mktemp("api")) / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.api"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    try:
        wait_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        text = log_path.read_text()
        assert "Traceback" not in text, text
