"""The Masakari intake through openstacksdk's instance_ha proxy (version discovery, then
segments, hosts, notifications) against the API as a real uvicorn process over real
PostgreSQL and the session broker; the OpenStack-shaped errors with httpx. Its own hosts
(ms-*)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from openstack import connection
from openstack import exceptions as sdk_exc

from tests.api.conftest import ADMIN, READER

MS_HOSTS = [("ms-host1", "up"), ("ms-spare", "up"), ("ms-maint", "maintenance"), ("ms-other", "up"),
            ("ms-down", "down")]


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def ha_url(api_server: str, api_database: str) -> str:
    for name, state in MS_HOSTS:
        asyncio.run(sql(api_database, "INSERT INTO hosts (name, state, vcpus, memory_mib, last_heartbeat)"
                        " VALUES ($1, $2, 16, 32768, now()) ON CONFLICT (name) DO NOTHING", name, state))
    return f"{api_server}/instance-ha/v1"


def sdk(url: str, token: str = ADMIN) -> connection.Connection:
    return connection.Connection(auth_type="admin_token", auth={"endpoint": url, "token": token},
                                 instance_ha_endpoint_override=url)


def host_row(url: str, name: str) -> asyncpg.Record:
    return asyncio.run(sql(url, "SELECT recovery_method, reserved, state FROM hosts WHERE name = $1", name))[0]


def test_version_documents_at_the_root_and_the_endpoint(ha_url: str) -> None:
    root = ha_url.rsplit("/", 1)[0]
    assert [(v["id"], v["min_version"], v["version"]) for v in httpx.get(f"{root}/").json()["versions"]] == [
        ("v1.0", "1.0", "1.2")]
    assert httpx.get(ha_url).json()["version"]["links"][0]["href"].endswith("/instance-ha/v1/")


def test_segments_and_hosts_map_to_recovery_method_and_reserved(ha_url: str, api_database: str) -> None:
    ha = sdk(ha_url).instance_ha
    seg = ha.create_segment(name="ms-rack1", recovery_method="reserved_host", service_type="COMPUTE",
                            description="rack 1")
    assert seg.uuid and seg.recovery_method == "reserved_host" and seg.is_enabled is True
    host = ha.create_host(seg.uuid, name="ms-host1", type="COMPUTE", control_attributes="SSH")
    spare = ha.create_host(seg.uuid, name="ms-spare", type="COMPUTE", control_attributes="SSH", reserved=True)
    assert host.failover_segment_id == seg.uuid and spare.reserved is True and host.reserved is False
    assert host_row(api_database, "ms-host1")["recovery_method"] == "reserved_host"
    assert host_row(api_database, "ms-spare")["reserved"] is True

    assert seg.uuid in [s.uuid for s in ha.segments()]
    assert ha.get_segment(seg.uuid).description == "rack 1"
    assert sorted(h.name for h in ha.hosts(seg.uuid)) == ["ms-host1", "ms-spare"]
    assert [h.name for h in ha.hosts(seg.uuid, reserved=True)] == ["ms-spare"]
    assert ha.get_host(host.uuid, seg.uuid).name == "ms-host1"

    updated = ha.update_segment(seg.uuid, recovery_method="rh_priority")
    assert updated.recovery_method == "rh_priority"
    assert {host_row(api_database, n)["recovery_method"] for n in ("ms-host1", "ms-spare")} == {"rh_priority"}
    assert ha.update_host(spare.uuid, seg.uuid, reserved=False).reserved is False
    assert host_row(api_database, "ms-spare")["reserved"] is False

    with pytest.raises(sdk_exc.ConflictException, match="one segment at most"):
        other = ha.create_segment(name="ms-rack2", recovery_method="auto", service_type="COMPUTE")
        ha.create_host(other.uuid, name="ms-host1", type="COMPUTE", control_attributes="SSH")
    with pytest.raises(sdk_exc.BadRequestException, match="could not be found"):
        ha.create_host(seg.uuid, name="ms-nowhere", type="COMPUTE", control_attributes="SSH")
    ha.delete_host(spare.uuid, seg.uuid)
    assert host_row(api_database, "ms-spare")["recovery_method"] == "auto"
    with pytest.raises(sdk_exc.NotFoundException):
        ha.get_host(spare.uuid, seg.uuid)


def test_notifications(ha_url: str, api_database: str) -> None:
    ha = sdk(ha_url).instance_ha
    seg = next(s for s in ha.segments() if s.name == "ms-rack1")
    now = datetime.now(UTC).isoformat()
    stopped = {"event": "STOPPED", "host_status": "NORMAL", "cluster_status": "OFFLINE"}
    n = ha.create_notification(type="COMPUTE_HOST", hostname="ms-host1", generated_time=now, payload=stopped)
    assert n.notification_uuid and n.status in ("new", "running") and n.payload == stopped
    row = asyncio.run(sql(api_database, "SELECT signal_id FROM notifications WHERE uuid = $1::uuid",
                          n.notification_uuid))[0]
    assert row["signal_id"] is not None  # a HostCommand suspect went to the detector, nothing else
    assert not asyncio.run(sql(api_database, "SELECT 1 FROM audit WHERE kind = 'evacuation-requested'"
                               " AND host = 'ms-host1'"))
    with pytest.raises(sdk_exc.ConflictException, match="duplicate"):
        ha.create_notification(type="COMPUTE_HOST", hostname="ms-host1", generated_time=now, payload=stopped)

    vm = ha.create_notification(type="INSTANCE", hostname="ms-host1", generated_time=now,
                                payload={"event": "LIFECYCLE", "instance_uuid": "x", "vir_domain_event": "STOPPED"})
    assert vm.status == "ignored"
    listed = {x.notification_uuid: x for x in ha.notifications()}
    assert {n.notification_uuid, vm.notification_uuid} <= set(listed)
    assert [x.type for x in ha.notifications(type="INSTANCE")] == ["INSTANCE"]
    one = ha.get_notification(n.notification_uuid)
    assert one.hostname == "ms-host1" and one.source_host_uuid == ha.get_host("ms-host1", seg.uuid).uuid

    ha.create_host(seg.uuid, name="ms-down", type="COMPUTE", control_attributes="SSH")
    late = ha.create_notification(type="COMPUTE_HOST", hostname="ms-down", generated_time=now, payload=stopped)
    assert late.status == "ignored"  # the detector already has it: no second signal
    assert "already down" in httpx.get(f"{ha_url}/notifications/{late.notification_uuid}",
                                       headers={"X-Auth-Token": READER}).json()["notification"]["message"]

    with pytest.raises(sdk_exc.BadRequestException, match="ms-other could not be found"):
        ha.create_notification(type="COMPUTE_HOST", hostname="ms-other", generated_time=now, payload=stopped)


def fault(r: httpx.Response, status: int, name: str, text: str) -> None:
    assert r.status_code == status, r.text
    assert list(r.json()) == [name] and text in r.json()[name]["message"], r.json()


def test_errors_the_openstack_way(ha_url: str) -> None:
    h = {"X-Auth-Token": ADMIN}
    seg = httpx.post(f"{ha_url}/segments", headers=h, json={"segment": {
        "name": "ms-errors", "recovery_method": "auto", "service_type": "COMPUTE"}}).json()["segment"]
    httpx.post(f"{ha_url}/segments/{seg['uuid']}/hosts", headers=h, json={"host": {
        "name": "ms-maint", "type": "COMPUTE", "control_attributes": "SSH"}}).raise_for_status()

    def notify(payload: Any, hostname: str = "ms-maint", type_: str = "COMPUTE_HOST") -> httpx.Response:
        return httpx.post(f"{ha_url}/notifications", headers=h, json={"notification": {
            "type": type_, "hostname": hostname, "generated_time": "2026-01-01T00:00:00", "payload": payload}})

    fault(notify({"event": "STOPPED"}), 409, "conflictingRequest", "already under maintenance")
    fault(notify({"event": "BOOM"}, "ms-host1"), 400, "badRequest", "event STARTED or STOPPED")
    fault(notify({}, "ms-host1", "VM"), 400, "badRequest", "type")
    fault(httpx.post(f"{ha_url}/notifications", headers=h, json={"nope": {}}), 400, "badRequest", "notification")
    fault(httpx.post(f"{ha_url}/segments", headers=h, json={"segment": {
        "name": "ms-x", "recovery_method": "best", "service_type": "COMPUTE"}}), 400, "badRequest", "recovery_method")
    fault(httpx.post(f"{ha_url}/segments", headers=h, json={"segment": {
        "name": "ms-errors", "recovery_method": "auto", "service_type": "COMPUTE"}}), 409, "conflictingRequest",
        "already exists")
    fault(httpx.get(f"{ha_url}/segments/00000000-0000-4000-8000-000000000000", headers=h), 404, "itemNotFound",
          "could not be found")
    fault(httpx.get(f"{ha_url}/notifications/123456789", headers=h), 404, "itemNotFound", "No notification")
    fault(httpx.get(f"{ha_url}/segments", headers={**h, "OpenStack-API-Version": "instance-ha 1.3"}), 406,
          "computeFault", "maximum is 1.2")
    ok = httpx.get(f"{ha_url}/segments", headers={**h, "OpenStack-API-Version": "instance-ha 1.2"})
    assert ok.headers["OpenStack-API-Version"] == "instance-ha 1.2" and "enabled" in ok.json()["segments"][0]
    assert "enabled" not in httpx.get(f"{ha_url}/segments", headers=h).json()["segments"][0]  # 1.0
    assert httpx.get(f"{ha_url}/segments").status_code == 401
    assert httpx.get(f"{ha_url}/segments", headers={"X-Auth-Token": READER}).status_code == 200
    fault(httpx.delete(f"{ha_url}/segments/{seg['uuid']}", headers={"X-Auth-Token": READER}), 403, "forbidden",
          "admin role")
    assert httpx.delete(f"{ha_url}/segments/{seg['uuid']}", headers=h).status_code == 204
    fault(httpx.get(f"{ha_url}/segments/{seg['uuid']}", headers=h), 404, "itemNotFound", "could not be found")
