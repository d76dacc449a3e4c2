"""One real QEMU guest (TCG) moved between two executor processes, each with its own
embedded QEMU driver ("host A", "host B") sharing one disk directory: while A runs it and
renews its lease, B refuses to start it, naming A; once A has destroyed its copy and the
lease expired, B runs it with the same UUID (the guest prints its DMI UUID on its serial
console) and MAC, and it is gone from A."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.bus import Producer
from services.common.embedded import EmbeddedBroker
from services.common.schemas import CleanupOrder, HostHeartbeat, InstanceReport, PowerState, RebuildResult
from services.evacctl.simcluster import SimVM

from . import qemu_guest
from .conftest import Site
from .test_process import Inbox

_missing = qemu_guest.missing_tools()
pytestmark = [
    pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(180),
    pytest.mark.skipif(bool(_missing), reason=f"QEMU test needs {', '.join(_missing)}: run scripts/install-qemu.sh"),
]
A, B = f"qa-{uuid.uuid4().hex[:4]}", f"qb-{uuid.uuid4().hex[:4]}"


@pytest.fixture
def hosts(site: Site, broker: EmbeddedBroker) -> Iterator[dict[str, Path]]:
    procs, roots = [], {}
    for host in (A, B):
        roots[host] = Path(tempfile.mkdtemp(prefix="evq-", dir="/tmp"))  # QEMU's monitor socket path is short
        env = {**os.environ, "EVACUATE_KAFKA_BOOTSTRAP": broker.bootstrap, "EVACUATE_HOST": host,
               "EVACUATE_LIBVIRT_URI": qemu_guest.embed_root(roots[host]),
               "EVACUATE_SHARED_STORAGE": str(site.shared), "EVACUATE_HEARTBEAT_INTERVAL": "0.4"}
        with (site.root / f"{host}.log").open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "services.executor"], env=env, stdout=out,
                                          stderr=out, cwd=Path(__file__).parents[2], start_new_session=True))
    yield roots
    for p in procs:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for root in roots.values():
        qemu_guest.kill_guests(root)
        shutil.rmtree(root, ignore_errors=True)


def _wait_serial(path: Path, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text(errors="replace") if path.exists() else ""
        if text in out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on the serial console after {timeout}s: {out[-500:]!r}")


async def test_real_guest_moves_from_a_to_b_with_same_uuid_and_mac(
        site: Site, broker: EmbeddedBroker, hosts: dict[str, Path]) -> None:
    kernel, initrd = qemu_guest.build(Path.home() / ".cache" / "evacuate" / "qemu-guest")
    vm_uuid, mac = str(uuid.uuid4()), "52:54:00:ab:cd:01"
    disk, serial = site.shared / "guest.img", site.shared / "guest-console.log"
    disk.write_bytes(b"\0" * 2**20)
    xml = qemu_guest.domain_xml(vm_uuid, "guest1", mac, kernel, initrd, disk, serial)
    vm = SimVM(uuid=vm_uuid, name="guest1", host=A, mac=mac, ip="", running=True, shared=True)
    inbox = Inbox(broker.bootstrap, hosts=(A, B))
    await inbox.consumer.start()
    producer = Producer(broker.bootstrap, "test")
    await producer.start()
    try:
        for host in (A, B):
            await inbox.until(lambda m, h=host: isinstance(m, HostHeartbeat) and m.host == h, timeout=60)

        async def order(target: str) -> RebuildResult:
            o = site.order(vm, xml, PowerState.RUNNING, target=target)
            await producer.publish(o)
            r = await inbox.until(lambda m: isinstance(m, RebuildResult) and m.order_id == o.order_id, timeout=90)
            assert isinstance(r, RebuildResult)
            return r

        on_a = await order(A)
        assert on_a.ok, on_a.error
        assert f"{qemu_guest.MARKER}{vm_uuid}".lower() in _wait_serial(serial, qemu_guest.MARKER).lower()

        refused = await order(B)  # A is alive and renews the lease: no second copy
        assert not refused.ok and refused.steps[-1].name == "take-lease" and f"lease held by {A}" in (
            refused.error or ""), refused

        await producer.publish(CleanupOrder(host=A, instances=(vm_uuid,)))  # what fencing A amounts to
        await inbox.until(lambda m: getattr(m, "destroyed", None) == (vm_uuid,), timeout=30)
        serial.unlink()
        time.sleep(1.5)  # A stopped renewing: its lease (2.5 heartbeats) expires

        on_b = await order(B)
        assert on_b.ok and on_b.power_state == PowerState.RUNNING, on_b.error
        assert f"{qemu_guest.MARKER}{vm_uuid}".lower() in _wait_serial(serial, qemu_guest.MARKER).lower()

        def seen(host: str, m: object) -> bool:
            # QEMU starts a guest paused and resumes it: a report taken in between says paused.
            return isinstance(m, InstanceReport) and m.host == host and (
                any(d.uuid == vm_uuid and d.power_state == PowerState.RUNNING for d in m.domains) == (host == B))
        report = await inbox.until(lambda m: seen(B, m), timeout=20)
        await inbox.until(lambda m: seen(A, m), timeout=20)
        assert isinstance(report, InstanceReport)
        [dom] = [d for d in report.domains if d.uuid == vm_uuid]
        assert dom.power_state == PowerState.RUNNING and [n.mac for n in dom.nics] == [mac]
    finally:
        await producer.stop()
        await inbox.consumer.stop()
