"""PostgreSQL restarts (issue 10): every connection is cut and nothing answers for a
while. No service may die or drop work: a handler waits for the database and is retried
(never dead-lettered), the detector keeps its effects until they are written, and an
evacuation that starts while the database is away completes once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from services.evacctl.demo import expected, wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = ("pr1", "pr2", "pr3")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own embedded broker and its own embedded PostgreSQL, which the test restarts.
    work = Path(tmp_path_factory.mktemp("postgres-restart"))
    s = Stack(work, kafka_bootstrap="", database_url="", fresh_database=True, postgres_dir=work / "pg")
    s.start_infra()
    s.start_services()
    for i, h in enumerate(HOSTS, 1):
        s.add_host(90 + i, h, vm_count=3, shutoff=1, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


async def _ready(stack: Stack) -> ClusterView:
    view = ClusterView(stack.kafka_bootstrap)
    await view.start()
    await wait_ready(stack, view, hosts=len(HOSTS), vms=3 * len(HOSTS), timeout=90)
    return view


async def test_services_ride_out_a_postgres_restart(stack: Stack) -> None:
    view = await _ready(stack)
    try:
        await asyncio.to_thread(stack.restart_postgres, 2.0)
        await asyncio.sleep(3.0)
        assert not stack.dead_services(), f"died with the database: {stack.dead_services()}"
        conn = await asyncpg.connect(stack.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM hosts WHERE state='up'") == len(HOSTS)
        finally:
            await conn.close()
    finally:
        await view.stop()


async def test_an_evacuation_that_starts_while_postgres_is_down_completes(stack: Stack) -> None:
    view = await _ready(stack)
    victim = HOSTS[0]
    try:
        killed = stack.kill(f"executor-{victim}")
        # Down before the detector can write the host down: its NodeDown waits for the database.
        await asyncio.to_thread(stack.restart_postgres, 3.0)
        vms = [vm for vm in stack.vms[victim] if vm.shared]
        conn = await asyncpg.connect(stack.database_url)
        try:
            deadline = time.monotonic() + 90
            while True:
                status = await conn.fetchval("SELECT status FROM evacuations WHERE source=$1 AND created_at >="
                                             " to_timestamp($2) ORDER BY created_at DESC LIMIT 1", victim, killed)
                placed = [view.where(vm.uuid, {victim}) for vm in vms]
                if status == "completed" and all(
                        len(p) == 1 and p[0][1].power_state == expected(vm.running)
                        for vm, p in zip(vms, placed, strict=True)):
                    break
                assert time.monotonic() < deadline, f"not recovered: {status}, {placed}"
                await asyncio.sleep(0.2)
            letters = await conn.fetchval("SELECT count(*) FROM audit WHERE kind = 'dead-letter'")
            assert not letters
        finally:
            await conn.close()
        assert not [n for n in stack.dead_services() if n != f"executor-{victim}"], stack.dead_services()
        logs = "".join(p.read_text(errors="replace") for p in (stack.workdir / "logs").glob("*.log"))
        assert "database unavailable" in logs or "not reachable yet" in logs or "transient error" in logs
    finally:
        await view.stop()
