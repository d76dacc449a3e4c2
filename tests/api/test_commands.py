"""Commands: the auth matrix for each, validation (422 naming the field), 404/409, and a
manual evacuation that lands on evacuate.plans through the outbox."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.common.schemas import Topic
from services.common.settings import ApiSettings

from .conftest import ADMIN, READER, VM_DOWN_1, VM_FREE, VM_UP, auth

TEMPLATE = """metadata {
  IP_ADDRESS;
  HTML_ROOT : string(1,255) : "/var/www/";
  ADMIN_EMAIL : string(3,254) : required;
  PORT : int(1,65535) : "80";
}
map {
  /etc/httpd/includes/server.inc
}
"""
BODIES = {"/etc/httpd/includes/server.inc": "ip={{IP_ADDRESS}} root={{HTML_ROOT}} port={{PORT}} to={{ADMIN_EMAIL}}\n"}

COMMANDS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/hosts/down2/evacuate", {}),
    ("POST", "/v1/hosts/flags1/enable", None),
    ("POST", "/v1/hosts/flags1/disable", None),
    ("POST", "/v1/hosts/flags1/reserve", None),
    ("POST", "/v1/hosts/flags1/unreserve", None),
    ("PUT", f"/v1/instances/{VM_UP}", {"priority": 9}),
    ("POST", "/v1/templates", {"name": "authz", "text": TEMPLATE, "bodies": BODIES}),
]


@pytest.mark.parametrize("method,path,body", COMMANDS)
async def test_commands_need_an_admin_token(client: httpx.AsyncClient, api_settings: ApiSettings, method: str,
                                            path: str, body: Any) -> None:
    conn = await asyncpg.connect(api_settings.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM audit")
        none = await client.request(method, path, json=body)
        assert none.status_code == 401 and "bearer token" in none.json()["message"]
        wrong = await client.request(method, path, json=body, headers=auth("not-a-token"))
        assert wrong.status_code == 401 and wrong.json()["message"] == "invalid token"
        reader = await client.request(method, path, json=body, headers=auth(READER))
        assert reader.status_code == 403 and "admin role" in reader.json()["message"]
        assert await conn.fetchval("SELECT count(*) FROM audit") == before, "a refused command changed something"
        admin = await client.request(method, path, json=body, headers=auth(ADMIN))
        assert admin.status_code in (200, 201, 202), admin.json()
    finally:
        await conn.close()


@pytest.mark.parametrize("host,body,status,message", [
    ("nope", {}, 404, "unknown host 'nope'"),
    ("up1", {}, 409, "host is up: "),
    ("suspect1", {}, 409, "host is suspect: "),
    ("down1", {"target": "down1"}, 409, "target 'down1' is the host being evacuated"),
    ("down1", {"target": "ghost"}, 409, "target 'ghost' is not a known host"),
    ("down1", {"target": "isolated1"}, 409, "target 'isolated1' is isolated, not up"),
    ("down1", {"target": "off1"}, 409, "target 'off1' is disabled"),
    ("down1", {"instances": [VM_UP]}, 409, f"instance {VM_UP} is not on host down1"),
    ("down1", {"instances": ["not-a-uuid"]}, 422, "instances.0: "),
    ("down1", {"target": ""}, 422, "target: "),
    ("down1", {"target": 7}, 422, "target: "),
    ("down1", {"colour": "red"}, 422, "colour: "),
    ("down1", [1, 2], 422, "body: "),
])
async def test_evacuate_is_validated(client: httpx.AsyncClient, host: str, body: Any, status: int,
                                     message: str) -> None:
    r = await client.post(f"/v1/hosts/{host}/evacuate", json=body, headers=auth(ADMIN))
    assert r.status_code == status, r.json()
    assert r.json()["message"].startswith(message), r.json()


async def test_evacuate_with_invalid_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/hosts/down1/evacuate", content=b"{not json", headers={
        **auth(ADMIN), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


async def test_evacuation_of_a_down_host_lands_on_the_plans_topic(client: httpx.AsyncClient,
                                                                  api_settings: ApiSettings) -> None:
    r = await client.post("/v1/hosts/down1/evacuate", json={"target": "up2", "instances": [VM_DOWN_1]},
                          headers=auth(ADMIN))
    assert r.status_code == 202, r.json()
    accepted = r.json()
    assert accepted["host"] == "down1" and accepted["instances"] == [VM_DOWN_1]
    consumer = AIOKafkaConsumer(str(Topic.PLANS), bootstrap_servers=api_settings.kafka_bootstrap,
                                group_id=f"api-test-{uuid.uuid4()}", auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await consumer.start()
    try:
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    env = json.loads(rec.value)
                    if env["id"] == accepted["message_id"]:
                        found = (rec.key, env)
        assert found is not None, "the EvacuationRequested never reached evacuate.plans"
        key, env = found
        assert key == b"down1" and env["type"] == "EvacuationRequested" and env["source"] == "api"
        assert env["data"] == {"host": "down1", "target": "up2", "instances": [VM_DOWN_1], "requested_by": "api:admin",
                               "leave_stopped": False}
    finally:
        await consumer.stop()
    conn = await asyncpg.connect(api_settings.database_url)
    try:
        detail = await conn.fetchval(
            "SELECT detail FROM audit WHERE kind = 'evacuation-requested' AND data->>'message_id' = $1",
            accepted["message_id"])
        assert detail == "manual evacuation of down1 requested to up2"
    finally:
        await conn.close()


async def test_isolated_host_may_be_evacuated_but_not_twice_while_running(client: httpx.AsyncClient,
                                                                          api_settings: ApiSettings) -> None:
    assert (await client.post("/v1/hosts/isolated1/evacuate", headers=auth(ADMIN))).status_code == 202
    conn = await asyncpg.connect(api_settings.database_url)
    evac = uuid.uuid4()
    try:
        await conn.execute("INSERT INTO evacuations (id, source, trigger, trigger_id, status)"
                           " VALUES ($1, 'isolated1', 'manual', $2, 'running')", evac, uuid.uuid4())
        r = await client.post("/v1/hosts/isolated1/evacuate", headers=auth(ADMIN))
        assert r.status_code == 409 and r.json()["message"] == f"an evacuation of isolated1 is already running: {evac}"
    finally:
        await conn.execute("UPDATE evacuations SET status = 'completed' WHERE id = $1", evac)
        await conn.close()


async def test_host_flags_change_and_are_audited(client: httpx.AsyncClient, api_settings: ApiSettings) -> None:
    r = await client.post("/v1/hosts/flags2/disable", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = await client.post("/v1/hosts/flags2/reserve", headers=auth(ADMIN))
    assert r.json()["reserved"] is True and r.json()["enabled"] is False
    host = (await client.get("/v1/hosts/flags2", headers=auth(READER))).json()
    assert (host["enabled"], host["reserved"]) == (False, True)
    await client.post("/v1/hosts/flags2/enable", headers=auth(ADMIN))
    r = await client.post("/v1/hosts/flags2/unreserve", headers=auth(ADMIN))
    assert (r.json()["enabled"], r.json()["reserved"]) == (True, False)
    conn = await asyncpg.connect(api_settings.database_url)
    try:
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM audit WHERE host = 'flags2' ORDER BY id")]
        assert kinds[-4:] == ["host-disabled", "host-reserved", "host-enabled", "host-unreserved"]
    finally:
        await conn.close()
    assert (await client.post("/v1/hosts/ghost/disable", headers=auth(ADMIN))).status_code == 404
    bad = await client.post("/v1/hosts/flags2/explode", headers=auth(ADMIN))
    assert bad.status_code == 422 and bad.json()["message"].startswith("path.action:")


async def test_instance_policy_template_and_metadata(client: httpx.AsyncClient) -> None:
    added = await client.post("/v1/templates", json={"name": "web", "text": TEMPLATE, "bodies": BODIES},
                              headers=auth(ADMIN))
    assert added.status_code in (200, 201)
    path = f"/v1/instances/{VM_FREE}"
    r = await client.put(path, json={"ha": False, "priority": 7}, headers=auth(ADMIN))
    assert r.status_code == 200 and (r.json()["ha"], r.json()["priority"]) == (False, 7)

    no_email = await client.put(path, json={"template": "web"}, headers=auth(ADMIN))
    assert no_email.status_code == 422
    assert no_email.json()["item"] == "ADMIN_EMAIL" and no_email.json()["line"] == 4
    assert "ADMIN_EMAIL is required" in no_email.json()["message"]

    bad_port = await client.put(path, json={"template": "web", "metadata": {"ADMIN_EMAIL": "a@b.c", "PORT": "0"}},
                                headers=auth(ADMIN))
    assert bad_port.status_code == 422 and bad_port.json()["item"] == "PORT"
    undeclared = await client.put(path, json={"template": "web", "metadata": {"ADMIN_EMAIL": "a@b.c", "X": "1"}},
                                  headers=auth(ADMIN))
    assert undeclared.status_code == 422 and undeclared.json()["item"] == "X"
    unknown = await client.put(path, json={"template": "nosuch"}, headers=auth(ADMIN))
    assert unknown.status_code == 422 and unknown.json()["item"] == "template"

    ok = await client.put(path, json={"template": "web@1", "metadata": {"ADMIN_EMAIL": "ops@example.com",
                                                                          "hostname": "www1"}}, headers=auth(ADMIN))
    assert ok.status_code == 200, ok.json()
    assert ok.json()["template"] == "web@1" and ok.json()["metadata"]["ADMIN_EMAIL"] == "ops@example.com"
    # metadata alone is checked against the instance's current template
    bad = await client.put(path, json={"metadata": {"PORT": "80"}}, headers=auth(ADMIN))
    assert bad.status_code == 422 and bad.json()["item"] == "ADMIN_EMAIL"
    cleared = await client.put(path, json={"template": None}, headers=auth(ADMIN))
    assert cleared.status_code == 200 and cleared.json()["template"] is None
    shown = (await client.get(path, headers=auth(READER))).json()
    assert (shown["ha"], shown["priority"], shown["template"]) == (False, 7, None)


@pytest.mark.parametrize("body,field", [
    ({"priority": -1}, "priority"),
    ({"priority": 10**10}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"ha": "maybe"}, "ha"),
    ({"metadata": {"A": 1}}, "metadata.A"),
    ({"metadata": ["A"]}, "metadata"),
    ({"template": "x" * 300}, "template"),
    ({"owner": "me"}, "owner"),
])
async def test_instance_update_validation_names_the_field(client: httpx.AsyncClient, body: Any, field: str) -> None:
    r = await client.put(f"/v1/instances/{VM_FREE}", json=body, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["message"].startswith(f"{field}:"), r.json()


async def test_instance_update_unknown_or_malformed_uuid(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/instances/99999999-9999-4999-8999-999999999999", json={"ha": True}, headers=auth(ADMIN))
    assert r.status_code == 404
    r = await client.put("/v1/instances/zzz", json={"ha": True}, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["message"].startswith("path.instance_uuid:")


async def test_nul_bytes_are_4xx_not_500(client: httpx.AsyncClient) -> None:
    r = await client.put(f"/v1/instances/{VM_FREE}", json={"template": "a\u0000b"}, headers=auth(ADMIN))
    assert 400 <= r.status_code < 500, r.text
    r = await client.get("/v1/instances", params={"host": "a\u0000b"}, headers=auth(READER))
    assert 400 <= r.status_code < 500, r.text
