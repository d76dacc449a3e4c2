"""The `manual` fence through the real interface: a host whose fence driver is manual is
never evacuated on silence alone; an operator's `evacctl host confirm-off` (API → outbox →
HostCommand → detector) is the proof, and then its VMs run elsewhere."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.common.embedded import EmbeddedBroker
from services.evacctl.demo import wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("manual")), kafka_bootstrap=broker.bootstrap, fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    s.start_infra()
    # This detector does not see the shared storage (as where it cannot mount it): no
    # storage-lease proof, so for a host with the manual driver only an operator's word counts.
    for name in ("planner", "templater", "api"):
        s.spawn(name, f"services.{name}")
    s.spawn("detector", "services.detector", EVACUATE_SHARED_STORAGE=str(s.workdir / "not-the-shared-storage"))
    s.add_host(51, "mf1", vm_count=3, shutoff=1, local=0, env={"EVACUATE_FENCE_DRIVER": "manual"})
    s.add_host(52, "mf2", vm_count=3, shutoff=1, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    await wait_ready(stack, v, hosts=2, vms=6)
    yield v
    await v.stop()


def evacctl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EVACUATE_API_URL=stack.api_url, EVACUATE_API_TOKEN=stack.api_token)
    return subprocess.run([sys.executable, "-m", "services.evacctl.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_manual_fence_waits_for_the_operator(stack: Stack, view: ClusterView) -> None:
    api = httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_token}"})
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + 60
        while (await api.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        r = await api.post("/v1/hosts/mf1/confirm-off")
        assert r.status_code == 409 and "mf1 is up" in r.json()["message"], r.text

        stack.kill("executor-mf1")
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT state FROM hosts WHERE name='mf1'") != "fencing":
            assert time.monotonic() < deadline, "mf1 never went to fencing"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # silence alone proves nothing with the manual driver
        assert await conn.fetchval("SELECT state FROM hosts WHERE name='mf1'") == "fencing"
        assert await conn.fetchval("SELECT count(*) FROM evacuations WHERE source='mf1'") == 0

        out = await asyncio.to_thread(evacctl, stack, "host", "confirm-off", "mf1")
        assert out.returncode == 0, out.stderr + out.stdout

        shared = [vm for vm in stack.vms["mf1"] if vm.shared]
        deadline = time.monotonic() + 60
        while not all(view.where(vm.uuid, {"mf1"}) for vm in shared):
            assert time.monotonic() < deadline, "the VMs of mf1 were not evacuated after confirm-off"
            await asyncio.sleep(0.1)
        evac = None
        while evac is None or evac["status"] == "running":
            assert time.monotonic() < deadline
            evac = await conn.fetchrow("SELECT * FROM evacuations WHERE source='mf1'")
            await asyncio.sleep(0.1)
        assert evac["status"] == "completed"
        host = await conn.fetchrow("SELECT state, state_reason FROM hosts WHERE name='mf1'")
        assert host["state"] == "down" and "operator confirmed" in host["state_reason"], dict(host)
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit WHERE host='mf1' ORDER BY id")]
        assert kinds.index("host-confirm-off") < kinds.index("NodeDown")
    finally:
        await conn.close()
        await api.aclose()
