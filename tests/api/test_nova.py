"""The Nova front door through python-novaclient (keystoneauth1 token_endpoint session)
against the API as a real uvicorn process, over real PostgreSQL and the session broker;
the OpenStack-shaped errors with httpx. Its own hosts (nv-*) and instances."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from keystoneauth1 import session
from keystoneauth1.token_endpoint import Token
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from services.api.nova_services import service_uuid
from tests.api.conftest import ADMIN, READER, domain_xml

VM_ON_DOWN = "55555555-5555-4555-8555-555555555551"
VM_ON_DOWN_2 = "55555555-5555-4555-8555-555555555552"
VM_ON_UP = "55555555-5555-4555-8555-555555555553"
VM_LOCAL = "55555555-5555-4555-8555-555555555554"
NV_HOSTS = [("nv-up1", "up", True), ("nv-up2", "up", True), ("nv-off", "up", False), ("nv-down1", "down", True),
            ("nv-fencing1", "fencing", True), ("nv-suspect1", "suspect", True), ("nv-maint", "maintenance", True)]


async def seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        for name, state, enabled in NV_HOSTS:
            await conn.execute(
                "INSERT INTO hosts (name, state, state_reason, enabled, vcpus, memory_mib, disk_gib, last_heartbeat)"
                " VALUES ($1, $2, 'seeded', $3, 32, 65536, 500, now()) ON CONFLICT (name) DO NOTHING",
                name, state, enabled)
        for uid, name, host, power, evacuable in (
                (VM_ON_DOWN, "nv-a", "nv-down1", "running", True), (VM_ON_DOWN_2, "nv-b", "nv-down1", "shutoff", True),
                (VM_ON_UP, "nv-c", "nv-up1", "paused", True), (VM_LOCAL, "nv-local", "nv-down1", "running", False)):
            await conn.execute(
                "INSERT INTO instances (uuid, name, host, power_state, vcpus, memory_mib, xml, macs, ips, evacuable,"
                " not_evacuable_reason, reported_at) VALUES ($1, $2, $3, $4, 2, 2048, $5, $6, $7, $8, $9, now())"
                " ON CONFLICT (uuid) DO NOTHING",
                uuid.UUID(uid), name, host, power, domain_xml(name, uid), ["52:54:00:00:00:0a"], ["10.0.0.10"],
                evacuable, None if evacuable else "disk vda is local (/var/lib/libvirt/images/x.qcow2)")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def nova_url(api_server: str, api_database: str) -> str:
    asyncio.run(seed(api_database))
    return f"{api_server}/compute/v2.1"


def nova(url: str, version: str, token: str = ADMIN) -> Any:
    sess = session.Session(auth=Token(endpoint=url, token=token))
    return nova_client.Client(version, session=sess, endpoint_override=url)


async def audit_of(url: str, kind: str, host: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return [dict(r["data"]) for r in await conn.fetch(
            "SELECT data FROM audit WHERE kind = $1 AND host = $2 ORDER BY id", kind, host)]
    finally:
        await conn.close()


def test_version_documents_need_no_token(nova_url: str) -> None:
    root = nova_url.rsplit("/", 1)[0]
    versions = httpx.get(f"{root}/").json()["versions"]
    assert [(v["id"], v["min_version"], v["version"]) for v in versions] == [("v2.1", "2.1", "2.95")]
    doc = httpx.get(nova_url).json()["version"]
    assert doc["status"] == "CURRENT" and doc["links"][0]["href"].endswith("/compute/v2.1/")


@pytest.mark.parametrize("version", ["2.1", "2.47", "2.95"])
def test_servers_get_and_list(nova_url: str, version: str) -> None:
    client = nova(nova_url, version, READER)
    s = client.servers.get(VM_ON_DOWN)
    assert (s.id, s.name, s.status) == (VM_ON_DOWN, "nv-a", "ACTIVE")
    assert getattr(s, "OS-EXT-SRV-ATTR:host") == getattr(s, "OS-EXT-SRV-ATTR:hypervisor_hostname") == "nv-down1"
    assert getattr(s, "OS-EXT-STS:power_state") == 1
    assert s.addresses == {"evacuate": [{"addr": "10.0.0.10", "version": 4, "OS-EXT-IPS:type": "fixed",
                                         "OS-EXT-IPS-MAC:mac_addr": "52:54:00:00:00:0a"}]}
    if version >= "2.47":
        assert s.flavor["vcpus"] == 2 and s.flavor["ram"] == 2048
    assert ("host_status" in s.to_dict()) is (version != "2.1")
    listed = {x.name: x for x in client.servers.list(search_opts={"host": "nv-down1"})}
    assert set(listed) == {"nv-a", "nv-b", "nv-local"} and listed["nv-b"].status == "SHUTOFF"
    assert client.servers.get(VM_ON_UP).status == "PAUSED"
    brief = client.servers.list(detailed=False, search_opts={"host": "nv-up1"})
    assert [x.id for x in brief] == [VM_ON_UP]
    with pytest.raises(nova_exc.NotFound, match="could not be found"):
        client.servers.get(str(uuid.uuid4()))


def test_services_list_and_force_down(nova_url: str, api_database: str) -> None:
    client = nova(nova_url, "2.53")
    services = {s.host: s for s in client.services.list(binary="nova-compute")}
    assert {h for h, _, _ in NV_HOSTS} <= set(services)
    assert services["nv-up1"].state == "up" and services["nv-down1"].state == "down"
    assert services["nv-off"].status == "disabled" and services["nv-up1"].status == "enabled"
    assert services["nv-fencing1"].id == service_uuid("nv-fencing1") and services["nv-fencing1"].forced_down is False

    forced = client.services.force_down(service_uuid("nv-fencing1"), True)
    assert forced.forced_down is True and forced.state == "down"
    confirms = asyncio.run(audit_of(api_database, "host-confirm-off", "nv-fencing1"))
    assert len(confirms) == 1 and confirms[0]["message_id"]  # the manual fence: HostCommand confirm_off
    with pytest.raises(nova_exc.Conflict, match="nv-up2 is up: its heartbeats still arrive"):
        client.services.force_down(service_uuid("nv-up2"), True)

    disabled = client.services.disable_log_reason(service_uuid("nv-up2"), "rack 4 maintenance")
    assert disabled.status == "disabled" and disabled.disabled_reason == "rack 4 maintenance"
    assert client.services.enable(service_uuid("nv-up2")).status == "enabled"

    old = nova(nova_url, "2.11")
    legacy = old.services.force_down("nv-suspect1", "nova-compute", True)
    assert legacy.forced_down is True and legacy.host == "nv-suspect1"
    assert asyncio.run(audit_of(api_database, "host-confirm-off", "nv-suspect1"))
    assert isinstance(old.services.list(host="nv-up1")[0].id, int)
    with pytest.raises(nova_exc.NotFound):
        old.services.force_down("nv-nope", "nova-compute", True)


@pytest.mark.parametrize("version, target", [("2.1", "nv-up2"), ("2.1", None), ("2.14", "nv-up2"),
                                             ("2.29", "nv-up2"), ("2.68", None), ("2.95", "nv-up2"), ("2.95", None)])
def test_evacuate_enters_our_manual_evacuation(nova_url: str, api_database: str, version: str,
                                               target: str | None) -> None:
    client = nova(nova_url, version)
    before = len(asyncio.run(audit_of(api_database, "evacuation-requested", "nv-down1")))
    if version == "2.29":
        resp, body = client.servers.evacuate(VM_ON_DOWN, target, force=True)
    else:
        resp, body = client.servers.evacuate(VM_ON_DOWN, target)
    assert resp.status_code == 200
    if version == "2.1":
        assert body == {"adminPass": None}  # before 2.14 the answer carries it; ours keeps the disk's
    else:
        assert not body
    assert resp.headers["OpenStack-API-Version"] == f"compute {version}"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == version
    requests = asyncio.run(audit_of(api_database, "evacuation-requested", "nv-down1"))
    assert len(requests) == before + 1
    last = requests[-1]
    assert last["instances"] == [VM_ON_DOWN] and last["target"] == target
    assert last["leave_stopped"] is (version == "2.95")
    assert last["requested_by"] == f"nova-api:evacuate@{version}"


def fault(r: httpx.Response, status: int, name: str, text: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == [name] and body[name]["code"] == status, body
    assert text in body[name]["message"], body


def test_errors_the_openstack_way(nova_url: str) -> None:
    h = {"X-Auth-Token": ADMIN}
    act = f"{nova_url}/servers/{VM_ON_DOWN}/action"

    def post(body: Any, version: str = "2.95", url: str = act, **headers: str) -> httpx.Response:
        return httpx.post(url, json=body, headers={**h, "X-OpenStack-Nova-API-Version": version, **headers})

    fault(httpx.get(f"{nova_url}/servers/{uuid.uuid4()}", headers=h), 404, "itemNotFound", "could not be found")
    fault(httpx.get(f"{nova_url}/servers/not-a-uuid", headers=h), 404, "itemNotFound", "could not be found")
    fault(post({"evacuate": {"host": "nv-down1"}}), 400, "badRequest", "can't be the same one")
    fault(post({"evacuate": {"host": "nv-nope"}}), 400, "badRequest", "Compute host nv-nope could not be found")
    fault(post({"evacuate": {"host": "nv-off"}}), 409, "conflictingRequest", "target 'nv-off' is disabled")
    fault(post({"evacuate": {"host": "nv-fencing1"}}), 409, "conflictingRequest", "is fencing, not up")
    fault(post({"evacuate": {}}, url=f"{nova_url}/servers/{VM_ON_UP}/action"), 409, "conflictingRequest",
          "Compute service of nv-up1 is still in use")
    fault(post({"evacuate": {}}, url=f"{nova_url}/servers/{VM_LOCAL}/action"), 409, "conflictingRequest",
          "disk vda is local")
    fault(post({"evacuate": {"onSharedStorage": True}}, "2.14"), 400, "badRequest", "'onSharedStorage' was unexpected")
    fault(post({"evacuate": {"host": "nv-up2"}}, "2.1"), 400, "badRequest", "'onSharedStorage' is a required")
    fault(post({"evacuate": {"onSharedStorage": False}}, "2.13"), 400, "badRequest", "only from their disks")
    fault(post({"evacuate": {"adminPass": "s3cret"}}), 400, "badRequest", "admin password can't be changed")
    fault(post({"evacuate": {"host": "nv-up2", "force": True}}, "2.68"), 400, "badRequest", "'force' was unexpected")
    fault(post({"evacuate": {"force": True}}, "2.30"), 400, "badRequest", "non-provided destination")
    fault(post({"evacuate": {"host": 5}}), 400, "badRequest", "host")
    fault(post({"reboot": {"type": "HARD"}}), 400, "badRequest", "no such action: reboot")
    fault(post([1, 2]), 400, "badRequest", "expected a JSON object")

    too_new = post({"evacuate": {}}, "2.96")
    fault(too_new, 406, "computeFault", "Version 2.96 is not supported by the API. Minimum is 2.1 and maximum is 2.95")
    fault(httpx.get(f"{nova_url}/servers", headers={**h, "OpenStack-API-Version": "compute 3.0"}), 406,
          "computeFault", "maximum is 2.95")
    fault(httpx.get(f"{nova_url}/servers", headers={**h, "OpenStack-API-Version": "compute two"}), 400,
          "badRequest", "invalid format")
    latest = httpx.get(f"{nova_url}/servers", headers={**h, "OpenStack-API-Version": "compute latest"})
    assert latest.headers["OpenStack-API-Version"] == "compute 2.95"
    assert latest.headers["Vary"] == "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    assert httpx.get(f"{nova_url}/servers", headers=h).headers["X-OpenStack-Nova-API-Version"] == "2.1"

    r = httpx.get(f"{nova_url}/servers")
    assert r.status_code == 401 and "X-Auth-Token" in r.json()["error"]["message"]
    assert httpx.get(f"{nova_url}/servers", headers={"X-Auth-Token": "wrong"}).status_code == 401
    assert httpx.get(f"{nova_url}/servers", headers={"Authorization": f"Bearer {READER}"}).status_code == 200
    fault(httpx.post(act, json={"evacuate": {}}, headers={"X-Auth-Token": READER}), 403, "forbidden", "admin role")
    fault(httpx.get(f"{nova_url}/flavors", headers=h), 404, "itemNotFound", "has no GET /v2.1/flavors")
    fault(httpx.put(f"{nova_url}/os-services/{service_uuid('nv-up1')}", json={"disabled_reason": "x"},
                    headers={**h, "X-OpenStack-Nova-API-Version": "2.53"}), 400, "badRequest", "'status' or")
    fault(httpx.put(f"{nova_url}/os-services/{uuid.uuid4()}", json={"status": "disabled"},
                    headers={**h, "X-OpenStack-Nova-API-Version": "2.53"}), 404, "itemNotFound", "could not be found")
    fault(httpx.put(f"{nova_url}/os-services/force-down", json={"host": "nv-up1", "binary": "nova-compute"},
                    headers={**h, "X-OpenStack-Nova-API-Version": "2.53"}), 400, "badRequest", "Invalid uuid")
