"""Template registration: parsed and checked first (422 with line/column/item), stored
as a new version in the templates table, listed and shown."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ADMIN, READER, auth
from .test_commands import BODIES, TEMPLATE


async def test_add_list_show_and_version(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/templates", json={"name": "site", "text": TEMPLATE, "bodies": BODIES},
                              headers=auth(ADMIN))
    assert first.status_code == 201, first.json()
    assert (first.json()["version"], first.json()["created"]) == (1, True)
    assert [i["name"] for i in first.json()["items"]] == ["IP_ADDRESS", "HTML_ROOT", "ADMIN_EMAIL", "PORT"]
    again = await client.post("/v1/templates", json={"name": "site", "text": TEMPLATE, "bodies": BODIES},
                              headers=auth(ADMIN))
    assert again.status_code == 200 and (again.json()["version"], again.json()["created"]) == (1, False)
    changed = {path: body + "# v2\n" for path, body in BODIES.items()}
    second = await client.post("/v1/templates", json={"name": "site", "text": TEMPLATE, "bodies": changed},
                               headers=auth(ADMIN))
    assert second.status_code == 201 and second.json()["version"] == 2

    listed = {t["name"]: t for t in (await client.get("/v1/templates", headers=auth(READER))).json()["items"]}
    assert (listed["site"]["version"], listed["site"]["versions"]) == (2, 2)
    shown = (await client.get("/v1/templates/site", headers=auth(READER))).json()
    assert shown["version"] == 2 and shown["versions"] == [1, 2] and shown["bodies"] == changed
    assert shown["paths"] == ["/etc/httpd/includes/server.inc"] and shown["text"] == TEMPLATE
    items = {i["name"]: i for i in shown["items"]}
    assert items["ADMIN_EMAIL"]["required"] and items["IP_ADDRESS"]["builtin"] and items["PORT"]["default"] == "80"
    v1 = (await client.get("/v1/templates/site", params={"version": 1}, headers=auth(READER))).json()
    assert v1["bodies"] == BODIES
    assert (await client.get("/v1/templates/nosuch", headers=auth(READER))).status_code == 404
    assert (await client.get("/v1/templates/site", params={"version": 9}, headers=auth(READER))).status_code == 404


@pytest.mark.parametrize("text,bodies,line,column,item,path", [
    ("metadata {\n  IP_ADDRESS;\n  X : nosuchtype;\n}\nmap { /a }\n", {"/a": ""}, 3, 7, "X", None),
    ("metadata { A; }\nmap {\n  /etc/a\n}\n", {}, 3, 3, "/etc/a", None),
    ("metadata { A; }\nmap { /a }\n", {"/a": "x\n  {{B}}\n"}, 2, 3, "B", "/a"),
    ("metadata { A : string : required }\nmap { /a }\n", {"/a": ""}, 1, 34, "A", None),
])
async def test_bad_template_is_422_with_line_column_item(client: httpx.AsyncClient, text: str,
                                                         bodies: dict[str, str], line: int, column: int,
                                                         item: str | None, path: str | None) -> None:
    r = await client.post("/v1/templates", json={"name": "broken", "text": text, "bodies": bodies},
                          headers=auth(ADMIN))
    assert r.status_code == 422, r.json()
    out = r.json()
    assert (out["line"], out["column"], out["path"]) == (line, column, path), out
    if item is not None:
        assert out["item"] == item
    assert out["message"].startswith(f"template broken: {path + ': ' if path else ''}line {line}, column {column}")
    assert (await client.get("/v1/templates/broken", headers=auth(READER))).status_code == 404


@pytest.mark.parametrize("body,field", [
    ({"name": "bad name", "text": TEMPLATE}, "name"),
    ({"name": "a@1", "text": TEMPLATE}, "name"),
    ({"name": "ok"}, "text"),
    ({"name": "ok", "text": TEMPLATE, "bodies": {"/a": 1}}, "bodies./a"),
    ({"name": "ok", "text": TEMPLATE, "extra": 1}, "extra"),
])
async def test_template_body_validation_names_the_field(client: httpx.AsyncClient, body: dict[str, object],
                                                        field: str) -> None:
    r = await client.post("/v1/templates", json=body, headers=auth(ADMIN))
    assert r.status_code == 422 and r.json()["message"].startswith(f"{field}:"), r.json()
