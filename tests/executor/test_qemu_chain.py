"""A real QEMU guest evacuated through the whole chain: its disk on the shared storage, it
runs under host A's executor; the detector, planner, templater and the executors of A and
B are OS processes on the real broker and PostgreSQL. Host A dies (its executor and the
QEMU it started, as at a power loss; the detector's process fence confirms it gone), and
the guest ends running under B with the same UUID (the guest prints its DMI UUID),
name, MAC and disk, its config drive rendered for B and attached, and B's own QEMU
binary (EVACUATE_EMULATOR) in its <emulator>."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.common.bus import Producer
from services.common.domain_xml import config_drive_of, emulator_of
from services.common.embedded import EmbeddedBroker
from services.common.schemas import Disk, HostHeartbeat, InstanceReport, PowerState, RebuildOrder, RebuildResult
from services.evacctl.stack import Stack
from services.templater.configdrive import read_config_drive

from . import qemu_guest
from .test_process import Inbox

_missing = qemu_guest.missing_tools()
pytestmark = [
    pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(180),
    pytest.mark.skipif(bool(_missing), reason=f"QEMU test needs {', '.join(_missing)}: run scripts/install-qemu.sh"),
]
A, B = f"qca-{uuid.uuid4().hex[:4]}", f"qcb-{uuid.uuid4().hex[:4]}"
TEMPLATE = "metadata {\n  HOST;\n  INSTANCE_NAME;\n}\nmap {\n  /etc/build-info\n}\n"
BODY = "built on {{HOST}} as {{INSTANCE_NAME}}\n"


@pytest.fixture(scope="module")
def chain(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Path]]]:
    s = Stack(Path(tmp_path_factory.mktemp("qchain")), kafka_bootstrap=broker.bootstrap, fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    roots = {h: Path(tempfile.mkdtemp(prefix="evq-", dir="/tmp")) for h in (A, B)}  # QEMU's socket paths are short
    try:
        s.start_infra()
        s.shared_dir.mkdir(parents=True, exist_ok=True)
        for name in ("detector", "planner", "templater"):
            s.spawn(name, f"services.{name}")
        # B names its own QEMU binary (another path to the same QEMU here): the guest's
        # <emulator> from A's inventory is rewritten to it.
        (roots[B] / "bin").mkdir()
        (roots[B] / "bin" / "qemu-of-b").symlink_to(shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64")
        for host in (A, B):
            extra = {"EVACUATE_EMULATOR": str(roots[B] / "bin" / "qemu-of-b")} if host == B else {}
            s.spawn(f"executor-{host}", "services.executor", EVACUATE_HOST=host, EVACUATE_FENCE_DRIVER="process",
                    EVACUATE_LIBVIRT_URI=qemu_guest.embed_root(roots[host]), EVACUATE_DATABASE_URL="",
                    EVACUATE_API_TOKENS="", **extra)
        yield s, roots
    finally:
        s.stop()
        for root in roots.values():
            qemu_guest.kill_guests(root)
            shutil.rmtree(root, ignore_errors=True)
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def inbox(chain: tuple[Stack, dict[str, Path]]) -> AsyncIterator[Inbox]:
    box = Inbox(chain[0].kafka_bootstrap, hosts=(A, B))
    await box.consumer.start()
    yield box
    await box.consumer.stop()


def _qemu_pids(vm_uuid: str) -> list[int]:
    """Every QEMU process on this machine that runs this VM, whichever host started it."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and f"-uuid {vm_uuid}" in cmd:
            out.append(int(proc.name))
    return out


async def _until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.1)


async def test_real_guest_is_evacuated_from_a_to_b_through_every_service(
        chain: tuple[Stack, dict[str, Path]], inbox: Inbox) -> None:
    stack, roots = chain
    kernel, initrd = qemu_guest.build(Path.home() / ".cache" / "evacuate" / "qemu-guest")
    vm_uuid, name, mac = str(uuid.uuid4()), f"qguest-{A}", "52:54:00:ab:cd:02"
    disk, serial = stack.shared_dir / f"{name}.img", stack.shared_dir / f"{name}-console.log"
    disk.write_bytes(b"\0" * 2**20)
    xml = qemu_guest.domain_xml(vm_uuid, name, mac, kernel, initrd, disk, serial)
    conn = await asyncpg.connect(stack.database_url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    producer = Producer(stack.kafka_bootstrap, "test")
    await producer.start()
    try:
        for host in (A, B):
            await inbox.until(lambda m, h=host: isinstance(m, HostHeartbeat) and m.host == h, timeout=90)
        await _until("A and B up", lambda: conn.fetchval(
            "SELECT count(*) = 2 FROM hosts WHERE state='up' AND name = ANY($1)", [A, B]), 60)

        # The guest starts on A the way every VM there would: an order A's executor runs.
        first = RebuildOrder(order_id=str(uuid.uuid4()), evacuation_id=str(uuid.uuid4()), item_id=str(uuid.uuid4()),
                             source="-", target=A, instance_uuid=vm_uuid, instance_name=name, attempt=1, xml=xml,
                             power_state=PowerState.RUNNING)
        await producer.publish(first)
        on_a = await inbox.until(lambda m: isinstance(m, RebuildResult) and m.order_id == first.order_id, timeout=60)
        assert isinstance(on_a, RebuildResult) and on_a.ok, on_a
        # Running, not only present: a QEMU guest still starting is reported paused, and an
        # evacuation keeps the recorded power state (it would rebuild the guest paused).
        await _until("the guest recorded running on A", lambda: conn.fetchval(
            "SELECT host = $2 AND present AND power_state = 'running' FROM instances WHERE uuid=$1",
            uuid.UUID(vm_uuid), A), 60)
        await conn.execute("INSERT INTO templates (name, version, text, bodies) VALUES ('build-info', 1, $1, $2)",
                           TEMPLATE, {"/etc/build-info": BODY})
        await conn.execute("UPDATE instances SET template='build-info' WHERE uuid=$1", uuid.UUID(vm_uuid))
        [pid_on_a] = _qemu_pids(vm_uuid)
        reported = await inbox.until(lambda m: isinstance(m, InstanceReport) and m.host == A and any(
            d.uuid == vm_uuid for d in m.domains), timeout=30)
        assert isinstance(reported, InstanceReport)
        emulator_on_a = emulator_of(next(d.xml for d in reported.domains if d.uuid == vm_uuid))

        # Host A dies: its executor (the process fence's target) and the QEMU it started.
        killed = stack.kill(f"executor-{A}")
        qemu_guest.kill_guests(roots[A])
        serial.unlink()
        await _until("A's QEMU gone", lambda: not Path(f"/proc/{pid_on_a}").exists(), 10)

        evac = await _until("the evacuation of A closed", lambda: conn.fetchrow(
            "SELECT * FROM evacuations WHERE source=$1 AND status <> 'running'", A), 90)
        assert isinstance(evac, asyncpg.Record) and evac["status"] == "completed", dict(evac)
        item = await conn.fetchrow("SELECT * FROM evacuation_items WHERE evacuation_id=$1", evac["id"])
        assert (item["status"], item["target"]) == ("done", B), dict(item)
        fence = await conn.fetchval("SELECT state_reason FROM hosts WHERE name=$1", A)

        def running_on_b(m: object) -> bool:
            return isinstance(m, InstanceReport) and m.host == B and any(
                d.uuid == vm_uuid and d.power_state == PowerState.RUNNING for d in m.domains)
        report = await inbox.until(running_on_b, timeout=30)
        await _until("B's guest on its console", lambda: vm_uuid in serial.read_text(errors="replace").lower()
                     if serial.exists() else False, 90)
        on_b = ", ".join(f"{st['name']} {st['seconds']:.2f}s" for st in item["steps"])
        print(f"\nkill of {A} -> evacuation {evac['created_at'].timestamp() - killed:.1f}s ({fence}) -> running on"
              f" {B} {item['finished_at'].timestamp() - killed:.1f}s ({on_b}) -> console {time.time() - killed:.1f}s")
    finally:
        await producer.stop()
        await conn.close()

    assert isinstance(report, InstanceReport)
    [dom] = [d for d in report.domains if d.uuid == vm_uuid]
    assert (dom.name, [n.mac for n in dom.nics]) == (name, [mac])
    assert dom.disks == (Disk(target="vda", path=str(disk), shared=True),)
    assert emulator_of(dom.xml) == str(roots[B] / "bin" / "qemu-of-b")
    drive = config_drive_of(dom.xml)
    assert drive == str(stack.shared_dir / ".evacuate" / "config-drives" / B / f"{vm_uuid}.iso"), dom.xml
    assert read_config_drive(Path(drive).read_bytes()) == {"/etc/build-info": f"built on {B} as {name}\n".encode()}
    [pid_on_b] = _qemu_pids(vm_uuid)  # one copy, on B, with the drive open
    assert pid_on_b != pid_on_a and drive in Path(f"/proc/{pid_on_b}/cmdline").read_bytes().decode(errors="replace")
    steps = {s["name"]: s for s in item["steps"]}
    assert steps["validate"]["detail"] == f"emulator {emulator_on_a} -> {roots[B] / 'bin' / 'qemu-of-b'}"
    assert steps["attach-config-drive"]["ok"]
