"""The OpenStack front doors on the real stack (every service its own process, simulated
hosts on libvirt's test driver):

- Nova: a host's executor is killed; once the detector has it fencing (manual driver),
  novaclient forces its compute service down (the manual fence) and the HA instances are
  evacuated; novaclient then evacuates the one with HA off at microversion 2.95 to a
  chosen host, where it is rebuilt and left stopped, as 2.95 says.
- Masakari: openstacksdk puts a host in a segment; its executor is killed and a
  COMPUTE_HOST STOPPED notification arrives long before the detector would have missed
  enough heartbeats (16 here); the detector suspects the host on the report, fences it
  (process driver), and only then are its VMs evacuated.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from keystoneauth1 import session
from keystoneauth1.token_endpoint import Token
from novaclient import client as nova_client
from openstack import connection

from services.api.nova_services import service_uuid
from services.common.embedded import EmbeddedBroker
from services.evacctl.demo import wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("openstack")), kafka_bootstrap=broker.bootstrap, fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    s.start_infra()
    for name in ("planner", "templater", "api"):
        s.spawn(name, f"services.{name}")
    # No storage-lease proof (as where the detector cannot mount the shared storage), and 16
    # missed heartbeats (8 s) before silence alone makes a host suspect.
    s.spawn("detector", "services.detector", EVACUATE_SHARED_STORAGE=str(s.workdir / "not-the-shared-storage"),
            EVACUATE_MISSES_BEFORE_SUSPECT="16")
    s.add_host(61, "os1", vm_count=3, shutoff=1, local=0, env={"EVACUATE_FENCE_DRIVER": "manual"})
    s.add_host(62, "os2", vm_count=1, shutoff=0, local=0)
    s.add_host(63, "os3", vm_count=2, shutoff=0, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    await wait_ready(stack, v, hosts=3, vms=6)
    yield v
    await v.stop()


async def until(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.2)


def nova(stack: Stack, version: str) -> Any:
    url = f"{stack.api_url}/compute/v2.1"
    return nova_client.Client(version, session=session.Session(auth=Token(endpoint=url, token=stack.api_token)),
                              endpoint_override=url)


async def test_nova_force_down_then_evacuate(stack: Stack, view: ClusterView) -> None:
    conn = await asyncpg.connect(stack.database_url)
    api = httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_token}"})
    try:
        running = [vm for vm in stack.vms["os1"] if vm.running]
        manual = running[0]  # HA off: NodeDown leaves it; an explicit Nova evacuate moves it
        r = await api.put(f"/v1/instances/{manual.uuid}", json={"ha": False})
        assert r.status_code == 200, r.text
        auto = [vm for vm in stack.vms["os1"] if vm.uuid != manual.uuid]

        stack.kill("executor-os1")
        await until("os1 fencing", lambda: conn.fetchval("SELECT state = 'fencing' FROM hosts WHERE name='os1'"))
        client = nova(stack, "2.53")
        forced = await asyncio.to_thread(client.services.force_down, service_uuid("os1"), True)
        assert forced.forced_down is True and forced.state == "down"

        async def auto_done() -> bool:
            return bool(await conn.fetchval(
                "SELECT status FROM evacuations WHERE source='os1' AND trigger='NodeDown' AND status <> 'running'"))
        await until("the NodeDown evacuation of os1", auto_done)
        for vm in auto:
            s = await asyncio.to_thread(client.servers.get, vm.uuid)
            assert getattr(s, "OS-EXT-SRV-ATTR:host") != "os1", vm.name
            assert s.status == ("ACTIVE" if vm.running else "SHUTOFF"), (vm.name, s.status)
        before = await asyncio.to_thread(client.servers.get, manual.uuid)
        assert getattr(before, "OS-EXT-SRV-ATTR:host") == "os1" and before.status == "ACTIVE"

        latest = nova(stack, "2.95")
        resp, _ = await asyncio.to_thread(latest.servers.evacuate, manual.uuid, "os2")
        assert resp.status_code == 200

        async def moved() -> Any:
            s = await asyncio.to_thread(latest.servers.get, manual.uuid)
            return s if getattr(s, "OS-EXT-SRV-ATTR:host") == "os2" and s.status != "REBUILD" else None
        after = await until("the Nova evacuation of the HA-off VM", moved)
        assert after.status == "SHUTOFF" and getattr(after, "OS-EXT-STS:power_state") == 4  # 2.95: left stopped
        defined = view.where(manual.uuid, {"os1"})
        assert [h for h, _ in defined] == ["os2"] and str(defined[0][1].power_state) == "shutoff"
        evac = await conn.fetchrow("SELECT * FROM evacuations WHERE source='os1' AND trigger='manual'")
        assert evac["leave_stopped"] is True and evac["status"] == "completed", dict(evac)
    finally:
        await api.aclose()
        await conn.close()


async def test_masakari_notification_suspects_then_fences(stack: Stack, view: ClusterView) -> None:
    url = f"{stack.api_url}/instance-ha/v1"
    ha = connection.Connection(auth_type="admin_token", auth={"endpoint": url, "token": stack.api_token},
                               instance_ha_endpoint_override=url).instance_ha
    conn = await asyncpg.connect(stack.database_url)
    try:
        seg = await asyncio.to_thread(ha.create_segment, name="os-rack", recovery_method="auto",
                                      service_type="COMPUTE")
        await asyncio.to_thread(ha.create_host, seg.uuid, name="os3", type="COMPUTE", control_attributes="SSH")
        killed_at = time.time()
        stack.kill("executor-os3")
        note = await asyncio.to_thread(
            ha.create_notification, type="COMPUTE_HOST", hostname="os3",
            generated_time=datetime.now(UTC).isoformat(),
            payload={"event": "STOPPED", "host_status": "NORMAL", "cluster_status": "OFFLINE"})

        async def suspected() -> Any:
            return await conn.fetchrow("SELECT at, detail FROM audit WHERE host='os3' AND kind='HostSuspect'")
        suspect = await until("os3 suspect", suspected)
        assert "reported stopped by an outside monitor" in suspect["detail"], suspect["detail"]
        down = await until("os3 down", lambda: conn.fetchrow(
            "SELECT at, detail FROM audit WHERE host='os3' AND kind='NodeDown'"))
        assert "fenced by process" in down["detail"], down["detail"]
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit WHERE host='os3' ORDER BY id")]
        assert kinds.index("masakari-notification") < kinds.index("HostSuspect") < kinds.index("NodeDown")

        for vm in stack.vms["os3"]:
            await until(f"{vm.name} evacuated", lambda vm=vm: asyncio.sleep(0, bool(view.where(vm.uuid, {"os3"}))))

        async def finished() -> Any:
            n = await asyncio.to_thread(ha.get_notification, note.notification_uuid)
            return n if n.status == "finished" else None
        assert (await until("the notification finished", finished)).hostname == "os3"
        # Silence alone would make os3 suspect only after 16 heartbeats (8 s).
        print(f"os3: suspected {suspect['at'].timestamp() - killed_at:.2f} s and fenced (NodeDown) "
              f"{down['at'].timestamp() - killed_at:.2f} s after its executor was killed")
    finally:
        await conn.close()
