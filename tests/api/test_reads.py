"""Read endpoints, /healthz and /metrics, against the seeded database."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ADMIN, EVAC_DONE, READER, TRIGGER_DONE, VM_DOWN_1, VM_DOWN_2, VM_UP, auth

READS = ["/v1/hosts", "/v1/hosts/up1", "/v1/instances", f"/v1/instances/{VM_UP}", "/v1/evacuations",
         f"/v1/evacuations/{EVAC_DONE}", "/v1/templates"]


@pytest.mark.parametrize("path", READS)
async def test_reads_need_a_token_of_either_role(client: httpx.AsyncClient, path: str) -> None:
    none = await client.get(path)
    assert none.status_code == 401 and "bearer token" in none.json()["message"]
    assert none.headers["www-authenticate"] == "Bearer"
    assert (await client.get(path, headers=auth("wrong"))).status_code == 401
    assert (await client.get(path, headers={"Authorization": f"Basic {READER}"})).status_code == 401
    assert (await client.get(path, headers=auth(READER))).status_code == 200
    assert (await client.get(path, headers=auth(ADMIN))).status_code == 200


async def test_hosts_show_state_fencing_capacity_usage_and_flags(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/hosts", headers=auth(READER))
    hosts = {h["name"]: h for h in r.json()["items"]}
    assert {"up1", "down1", "isolated1", "off1"} <= set(hosts)
    down = hosts["down1"]
    assert (down["state"], down["state_reason"]) == ("down", "fenced by process")
    assert down["fence"]["driver"] == "process" and down["last_heartbeat"]
    assert down["capacity"]["vcpus"] == 32 and down["capacity"]["memory_mib"] == 65536
    assert down["usage"] == {"instances": 2, "vcpus": 4, "memory_mib": 4096, "disk_gib": 0}
    assert hosts["off1"]["enabled"] is False and hosts["up1"]["enabled"] is True


async def test_one_host_and_unknown_host(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/hosts/down1", headers=auth(READER))
    assert r.status_code == 200
    assert r.json()["detector"] == {"state": "down"} and r.json()["open_evacuation"] is None
    missing = await client.get("/v1/hosts/nope", headers=auth(READER))
    assert missing.status_code == 404 and missing.json()["message"] == "unknown host 'nope'"


async def test_instances_filter_and_page(client: httpx.AsyncClient) -> None:
    r = (await client.get("/v1/instances", params={"host": "down1"}, headers=auth(READER))).json()
    assert [i["name"] for i in r["items"]] == ["vm-a", "vm-b"] and r["total"] == 2
    r = (await client.get("/v1/instances", params={"host": "down1", "limit": 1, "offset": 1},
                          headers=auth(READER))).json()
    assert [i["uuid"] for i in r["items"]] == [VM_DOWN_2] and r["total"] == 2
    r = (await client.get("/v1/instances", params={"ha": "false"}, headers=auth(READER))).json()
    assert VM_UP in [i["uuid"] for i in r["items"]] and not any(i["ha"] for i in r["items"])
    assert VM_DOWN_1 not in [i["uuid"] for i in r["items"]]
    assert "xml" not in r["items"][0]


async def test_one_instance(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v1/instances/{VM_DOWN_1}", headers=auth(READER))
    assert r.status_code == 200
    assert r.json()["name"] == "vm-a" and "<domain" in r.json()["xml"]
    missing = await client.get("/v1/instances/99999999-9999-4999-8999-999999999999", headers=auth(READER))
    assert missing.status_code == 404


@pytest.mark.parametrize("path,params,field", [
    ("/v1/instances/not-a-uuid", {}, "path.instance_uuid"),
    ("/v1/evacuations/not-a-uuid", {}, "path.evacuation_id"),
    ("/v1/instances", {"limit": 0}, "query.limit"),
    ("/v1/instances", {"limit": "many"}, "query.limit"),
    ("/v1/instances", {"offset": -1}, "query.offset"),
    ("/v1/instances", {"ha": "perhaps"}, "query.ha"),
    ("/v1/evacuations", {"trigger_id": "x"}, "query.trigger_id"),
    ("/v1/evacuations", {"limit": 10**12}, "query.limit"),
    ("/v1/templates/x", {"version": 0}, "query.version"),
])
async def test_bad_query_or_path_is_422_naming_the_field(client: httpx.AsyncClient, path: str,
                                                         params: dict[str, object], field: str) -> None:
    r = await client.get(path, params=params, headers=auth(READER))
    assert r.status_code == 422
    assert r.json()["message"].startswith(field + ":"), r.json()
    assert r.json()["detail"][0]["field"] == field


async def test_evacuations_filter_and_detail_with_audit_trail(client: httpx.AsyncClient) -> None:
    r = (await client.get("/v1/evacuations", params={"source": "old1"}, headers=auth(READER))).json()
    assert [e["id"] for e in r["items"]] == [EVAC_DONE]
    assert r["items"][0]["counts"] == {"items": 1, "done": 1, "pending": 0, "not_done": 0}
    by_trigger = (await client.get("/v1/evacuations", params={"trigger_id": TRIGGER_DONE},
                                   headers=auth(READER))).json()
    assert [e["id"] for e in by_trigger["items"]] == [EVAC_DONE]
    none = (await client.get("/v1/evacuations", params={"source": "old1", "status": "running"},
                             headers=auth(READER))).json()
    assert none["items"] == [] and none["total"] == 0

    d = (await client.get(f"/v1/evacuations/{EVAC_DONE}", headers=auth(READER))).json()
    assert d["status"] == "completed" and d["source"] == "old1"
    [item] = d["items"]
    assert (item["target"], item["attempt"], item["status"]) == ("up1", 1, "done")
    assert "most free memory" in item["reason"] and item["steps"][0]["name"] == "define"
    assert [a["kind"] for a in d["audit"]] == ["placement", "rebuild-done", "evacuation-closed"]
    missing = await client.get("/v1/evacuations/99999999-9999-4999-8999-999999999999", headers=auth(READER))
    assert missing.status_code == 404


async def test_healthz_and_metrics_are_open(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    await client.get("/v1/hosts", headers=auth(READER))
    m = await client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'evacuate_api_requests_total{method="GET",route="/v1/hosts",status="200"}' in m.text


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/hosts", "/v1/hosts/{name}/evacuate", "/v1/instances/{instance_uuid}", "/v1/templates",
            "/v1/evacuations/{evacuation_id}", "/healthz", "/metrics"} <= set(spec["paths"])
    assert (await client.get("/docs")).status_code == 200
