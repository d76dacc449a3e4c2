"""The broker restarts and keeps nothing (the embedded broker's memory storage): the
services notice it at run time, recreate the topics and re-publish from PostgreSQL.

1. A restart longer than the detection timeout must not make the detector declare every
   host dead (it is blind, not the hosts): no host leaves `up`, no executor is fenced.
2. A restart in the middle of an evacuation: its plan, stored in PostgreSQL, is lost from
   the bus; the planner re-publishes it and the evacuation completes, every VM once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from services.evacctl.demo import expected, wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = ("br1", "br2", "br3")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own embedded broker (the session's shared one must not be restarted).
    s = Stack(Path(tmp_path_factory.mktemp("broker-restart")), kafka_bootstrap="", fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    s.start_infra()
    s.start_services()
    for i, h in enumerate(HOSTS, 1):
        s.add_host(70 + i, h, vm_count=4, shutoff=1, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


async def _ready(stack: Stack) -> None:
    view = ClusterView(stack.kafka_bootstrap)
    await view.start()
    try:
        await wait_ready(stack, view, hosts=len(HOSTS), vms=4 * len(HOSTS), timeout=90)
    finally:
        await view.stop()


async def test_a_broker_restart_is_not_a_mass_failure(stack: Stack) -> None:
    await _ready(stack)
    conn = await asyncpg.connect(stack.database_url)
    try:
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit")
        # Down for longer than the aggressive detection timeout (3 x 0.5 s).
        back = await asyncio.to_thread(stack.restart_broker, 3 * stack.heartbeat_interval * 2)
        deadline = time.monotonic() + 60
        while True:
            fresh = await conn.fetchval(
                "SELECT count(*) FROM hosts WHERE name = ANY($1) AND state = 'up'"
                " AND last_heartbeat > to_timestamp($2)",
                list(HOSTS), back + 1.0)
            if fresh == len(HOSTS):
                break
            assert time.monotonic() < deadline, "heartbeats did not come back after the broker restart"
            await asyncio.sleep(0.2)
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit WHERE id > $1", before)]
        assert not {"HostSuspect", "NodeDown", "FenceFailed", "HostIsolated"} & set(kinds), kinds
        assert not [n for n in stack.dead_services()], f"fenced or died: {stack.dead_services()}"
        logs = "".join(p.read_text(errors="replace") for p in (stack.workdir / "logs").glob("*.log"))
        assert "the broker has lost its data" in logs and "detector blind" in logs
    finally:
        await conn.close()


async def test_an_evacuation_survives_a_broker_restart_in_its_middle(stack: Stack) -> None:
    await _ready(stack)
    victim = HOSTS[0]
    conn = await asyncpg.connect(stack.database_url)
    try:
        # No templater: the plan waits on the bus, where the broker restart loses it.
        stack.kill("templater")
        killed = stack.kill(f"executor-{victim}")
        deadline = time.monotonic() + 60
        while not await conn.fetchval("SELECT count(*) FROM evacuations WHERE source=$1 AND created_at >="
                                      " to_timestamp($2)", victim, killed):
            assert time.monotonic() < deadline, "no evacuation started"
            await asyncio.sleep(0.02)
        # The plan is stored in PostgreSQL and waits on the bus: lose it.
        await asyncio.to_thread(stack.restart_broker, 0.5)
        stack.restart("templater")
        view = ClusterView(stack.kafka_bootstrap)
        await view.start()
        try:
            vms = [vm for vm in stack.vms[victim] if vm.shared]
            deadline = time.monotonic() + 90
            while True:
                placed = {vm.uuid: view.where(vm.uuid, {victim}) for vm in vms}
                status = await conn.fetchval("SELECT status FROM evacuations WHERE source=$1 ORDER BY created_at"
                                             " DESC LIMIT 1", victim)
                if status != "running" and all(
                        len(p) == 1 and p[0][1].power_state == expected(vm.running)
                        for vm, p in zip(vms, placed.values(), strict=True)):
                    break
                assert time.monotonic() < deadline, f"not recovered: {status}, {placed}"
                await asyncio.sleep(0.2)
            assert status == "completed"
            for vm in vms:  # exactly one copy, on a live host
                assert len(view.where(vm.uuid, {victim})) == 1
        finally:
            await view.stop()
        logs = (stack.workdir / "logs" / "planner.log").read_text(errors="replace")
        assert "reconcile: re-published" in logs
    finally:
        await conn.close()
