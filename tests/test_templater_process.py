"""The templater end to end over real parts (tansu broker, PostgreSQL, libvirt test
driver, every service and every simulated host its own OS process): a host with
templated instances is killed; the templated VM comes back on its target with a config
drive holding its mapped file rendered for the *target* host, an instance whose
template cannot render fails alone with the error, and the rest of the plan goes on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.common.embedded import EmbeddedBroker
from services.common.schemas import DomainInfo, PowerState
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import SimVM
from services.evacctl.stack import Stack, admin_sql, with_database
from services.templater.bundle import load_bundle
from services.templater.configdrive import read_config_drive, read_meta_data, volume_id
from services.templater.template import TemplateError, parse, validate_values

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "templates" / "httpd"
SERVER_INC = "/etc/httpd/includes/server.inc"
HTML_ROOT = "/srv/www/shop"

# Host names and indexes (which make the VMs' uuids) of their own: the broker is shared
# with the other process tests of the session.
VICTIM, OTHERS = "tp1", ("tp2", "tp3")
HOSTS = ((7, VICTIM, 7), (8, OTHERS[0], 3), (9, OTHERS[1], 3))  # index, name, VMs

# A template that uses the built-ins which differ between source and target.
BUILD_INFO = """# where and as what this instance was (re)built
metadata {
  HOST;
  INSTANCE_NAME;
  MAC_ADDRESS;
  ROLE : enum("web", "db") : "db";
}
map {
  /etc/build-info
}
"""
BUILD_INFO_BODY = "built on {{HOST}} as {{INSTANCE_NAME}} ({{MAC_ADDRESS}}) role {{ROLE}}\n"

# DESIGN §5's full example: ADMIN_EMAIL is required, and the instance gives no value.
NEEDS_ADMIN = """metadata {
  IP_ADDRESS;
  HTML_ROOT : string(1,255) : "/var/www/";
  ADMIN_EMAIL : string(3,254) : required;
}
map {
  /etc/httpd/includes/server.inc
}
"""
NEEDS_ADMIN_BODY = "ServerAdmin {{ADMIN_EMAIL}}\n"

# A mapped file too big for a config drive sent inline on the bus: staged on the shared
# storage, the order carries its path and sha256.
HUGE = "metadata { INSTANCE_NAME; }\nmap { /var/lib/blob }\n"
HUGE_BODY = "{{INSTANCE_NAME}}\n" + "x" * 2_000_000


@pytest.fixture(scope="module")
def own_database(database_url: str) -> Iterator[str]:
    """A database of this module's own: the detector and planner of another module's stack
    leave hosts behind in the session database that this stack's detector would declare down."""
    name = f"evacuate_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin_sql(database_url, f'CREATE DATABASE "{name}"'))
    yield with_database(database_url, name)
    asyncio.run(admin_sql(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("tplstack")), kafka_bootstrap=broker.bootstrap, database_url=own_database)
    s.start_infra()
    s.start_services()
    for index, host, count in HOSTS:
        s.add_host(index, host, vm_count=count, shutoff=1, local=1)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


@pytest.fixture(scope="module")
async def view(stack: Stack) -> AsyncIterator[ClusterView]:
    v = ClusterView(stack.kafka_bootstrap)
    await v.start()
    hosts = [h for _, h, _ in HOSTS]
    vms = [vm.uuid for h in hosts for vm in stack.vms[h]]
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            up = await conn.fetchval("SELECT count(*) FROM hosts WHERE state='up' AND name = ANY($1)", hosts)
            known = await conn.fetchval("SELECT count(*) FROM instances WHERE present AND uuid = ANY($1::uuid[])",
                                        [uuid.UUID(u) for u in vms])
            if up == len(hosts) and known == len(vms) and all(h in v.reports for h in hosts):
                break
            assert not stack.dead_services(), f"service(s) exited during start (see {stack.workdir}/logs)"
            assert time.monotonic() < deadline, f"not ready: {up} hosts up, {known} of {len(vms)} instances known"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    yield v
    await v.stop()


def _config_drive_source(dom: DomainInfo) -> list[str]:
    """The source files of the domain's config-drive cdroms (serial config-2)."""
    root = ET.fromstring(dom.xml)
    out = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device") == "cdrom" and (disk.findtext("serial") or "").strip() == "config-2":
            src = disk.find("source")
            out.append(src.get("file", "") if src is not None else "")
    return out


async def _register(conn: asyncpg.Connection, name: str, text: str, bodies: dict[str, str]) -> None:
    await conn.execute("INSERT INTO templates (name, version, text, bodies) VALUES ($1, 1, $2, $3)",
                       name, text, bodies)


async def _assign(conn: asyncpg.Connection, vm: SimVM, template: str, metadata: dict[str, str]) -> None:
    done = await conn.execute("UPDATE instances SET template=$2, metadata=$3 WHERE uuid=$1",
                              uuid.UUID(vm.uuid), template, metadata)
    assert done == "UPDATE 1", f"{vm.name} is not in the inventory"


async def test_templated_instance_gets_config_drive_rendered_for_target(stack: Stack, view: ClusterView) -> None:
    vms = stack.vms[VICTIM]
    # tp1-vm00..04 run, vm05 is shut off (all on shared storage), vm06 has a local disk.
    web, no_admin, unregistered, corrupt, huge, shut, local = vms
    assert [vm.running for vm in vms[:6]] == [True] * 5 + [False]
    assert web.shared and shut.shared and not local.shared

    text, bodies = load_bundle(EXAMPLE)
    assert set(bodies) == {SERVER_INC}
    conn = await asyncpg.connect(stack.database_url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        await _register(conn, "httpd", text, bodies)
        await _register(conn, "build-info", BUILD_INFO, {"/etc/build-info": BUILD_INFO_BODY})
        await _register(conn, "needs-admin", NEEDS_ADMIN, {SERVER_INC: NEEDS_ADMIN_BODY})
        await _register(conn, "huge", HUGE, {"/var/lib/blob": HUGE_BODY})
        # A row the API would refuse (a body that is not text): it must fail alone all the same.
        await conn.execute("INSERT INTO templates (name, version, text, bodies) VALUES ('corrupt', 1, $1, $2)",
                           "metadata { HOST; }\nmap { /etc/motd }\n", {"/etc/motd": 42})
        await _assign(conn, web, "httpd", {"HTML_ROOT": HTML_ROOT})
        await _assign(conn, shut, "build-info", {"ROLE": "web"})
        await _assign(conn, no_admin, "needs-admin", {"HTML_ROOT": HTML_ROOT})
        await _assign(conn, unregistered, "no-such-template", {})
        await _assign(conn, corrupt, "corrupt", {})
        await _assign(conn, huge, "huge", {})

        killed = stack.kill(f"executor-{VICTIM}")
        deadline = time.monotonic() + 90
        evac = None
        while time.monotonic() < deadline:
            evac = await conn.fetchrow("SELECT * FROM evacuations WHERE source=$1 AND trigger='NodeDown'", VICTIM)
            if evac is not None and evac["status"] != "running":
                break
            await asyncio.sleep(0.1)
        assert evac is not None and evac["status"] == "completed_with_errors", evac
        assert evac["created_at"].timestamp() > killed
        items = {str(r["instance_uuid"]): r for r in await conn.fetch(
            "SELECT * FROM evacuation_items WHERE evacuation_id=$1", evac["id"])}
        failures = await conn.fetch("SELECT * FROM audit WHERE evacuation_id=$1 AND kind='rebuild-failed'",
                                    evac["id"])
    finally:
        await conn.close()

    # Every VM of the host that could be rebuilt was: the failing renders did not stop the plan.
    rebuilt = [web, shut, huge]
    while time.monotonic() < deadline and not all(view.where(vm.uuid, {VICTIM}) for vm in rebuilt):
        await asyncio.sleep(0.1)
    target_of: dict[str, str] = {}
    for vm in rebuilt:
        seen = view.where(vm.uuid, {VICTIM})
        assert len(seen) == 1, f"{vm.name} is defined on {[h for h, _ in seen]} (expected exactly one host)"
        host, dom = seen[0]
        assert host in OTHERS
        assert dom.power_state == (PowerState.RUNNING if vm.running else PowerState.SHUTOFF), vm.name
        item = items[vm.uuid]
        assert item["status"] == "done" and item["target"] == host, dict(item)
        target_of[vm.uuid] = host

    # The httpd instance: a config drive on shared storage, with the spec's file rendered.
    host, dom = view.where(web.uuid, {VICTIM})[0]
    sources = _config_drive_source(dom)
    assert len(sources) == 1, f"expected one config-2 cdrom in {dom.xml}"
    iso = Path(sources[0])
    assert iso.is_file(), iso
    assert iso.resolve().is_relative_to(stack.shared_dir.resolve()), iso
    image = iso.read_bytes()
    assert volume_id(image) == "config-2"
    files = read_config_drive(image)
    expected = bodies[SERVER_INC].replace("{{IP_ADDRESS}}", web.ip).replace("{{HTML_ROOT}}", HTML_ROOT)
    assert files == {SERVER_INC: expected.encode()}
    assert files[SERVER_INC].startswith(f'<VirtualHost {web.ip}:*>\nDocumentRoot "{HTML_ROOT}";'.encode())
    meta = read_meta_data(image)
    assert (meta["uuid"], meta["name"]) == (web.uuid, web.name)
    assert any(s["name"] == "attach-config-drive" and s["ok"] for s in items[web.uuid]["steps"]), items[web.uuid]

    # The shut-off instance: HOST is the target it was rebuilt on, not the dead source.
    host, dom = view.where(shut.uuid, {VICTIM})[0]
    sources = _config_drive_source(dom)
    assert len(sources) == 1 and Path(sources[0]).is_file(), dom.xml
    assert Path(sources[0]).resolve().is_relative_to(stack.shared_dir.resolve())
    image = Path(sources[0]).read_bytes()
    assert volume_id(image) == "config-2"
    assert read_config_drive(image) == {
        "/etc/build-info": f"built on {target_of[shut.uuid]} as {shut.name} ({shut.mac}) role web\n".encode()}

    # The large drive went through the shared storage, checked by its sha256.
    host, dom = view.where(huge.uuid, {VICTIM})[0]
    sources = _config_drive_source(dom)
    assert len(sources) == 1, dom.xml
    big = Path(sources[0]).read_bytes()
    assert read_config_drive(big) == {"/var/lib/blob": HUGE_BODY.replace("{{INSTANCE_NAME}}", huge.name).encode()}
    staged = list((stack.shared_dir / ".evacuate" / "config-drives" / "staged").glob("*.iso"))
    assert len(staged) == 1 and staged[0].read_bytes() == big
    step = next(s for s in items[huge.uuid]["steps"] if s["name"] == "attach-config-drive")
    assert step["ok"] and hashlib.sha256(big).hexdigest()[:16] in step["detail"], step

    # The instances whose template cannot render failed alone, with the error, once.
    with pytest.raises(TemplateError) as refused:
        validate_values(parse(NEEDS_ADMIN), {"HTML_ROOT": HTML_ROOT})
    assert (refused.value.line, refused.value.item) == (4, "ADMIN_EMAIL")
    for vm, why in ((no_admin, ["line 4, column", "item 'ADMIN_EMAIL'", "required", "needs-admin"]),
                    (unregistered, ["no-such-template", "not registered"]),
                    (corrupt, ["template corrupt:"])):
        item = items[vm.uuid]
        assert item["status"] == "failed", dict(item)
        for part in why:
            assert part in item["reason"], (part, item["reason"])
        assert item["attempt"] == 1, f"{vm.name} was retried: {dict(item)}"
        assert len([f for f in failures if vm.name in f["detail"]]) == 1, [dict(f) for f in failures]
        assert not view.where(vm.uuid, {VICTIM}), f"{vm.name} must not be rebuilt anywhere"
        assert [s["name"] for s in item["steps"]] == ["render"], item["steps"]
    assert str(refused.value) in items[no_admin.uuid]["reason"]

    assert items[local.uuid]["status"] == "not_evacuable"
    assert not view.where(local.uuid, {VICTIM})
    assert len(items) == len(vms)
