"""Server templates: register a new version (parsed and checked first), list, show."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.access import ADMIN, POOL, READER
from services.common.db import audit
from services.templater.template import Template, TemplateError, check_bodies, parse

router = APIRouter(prefix="/v1/templates", tags=["templates"])

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="Template name (instances refer to it as name or name@version)")
    text: str = Field(max_length=1_000_000, description="The template: metadata { ... } map { ... }")
    bodies: dict[str, str] = Field(default_factory=dict, description="Guest path -> body of every mapped file")


def template_problem(exc: TemplateError, where: str) -> HTTPException:
    """A 422 naming the line, column and item of a template error."""
    return HTTPException(422, {"message": f"{where}: {exc}", "line": exc.line, "column": exc.column,
                               "item": exc.item, "path": exc.path})


def describe(t: Template) -> dict[str, Any]:
    return {
        "items": [{"name": i.name, "type": str(i.type), "default": i.default, "required": i.required,
                   "builtin": i.builtin} for i in t.items],
        "paths": [p.path for p in t.paths],
    }


async def load_template(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> asyncpg.Record | None:
    """The template a reference names: ``name`` (latest version) or ``name@version``."""
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        return None
    return await conn.fetchrow(
        "SELECT name, version, text, bodies, created_at FROM templates WHERE name = $1"
        " AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
        name, int(version) if version else None)


@router.post("", status_code=201, dependencies=[ADMIN],
             summary="Register a new version of a server template (refused with line/column/item when invalid)")
async def add_template(body: TemplateIn, response: Response, db: asyncpg.Pool = POOL) -> dict[str, Any]:
    try:
        parsed = parse(body.text)
        check_bodies(parsed, body.bodies)
    except TemplateError as exc:
        raise template_problem(exc, f"template {body.name}") from None
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('template:' || $1))", body.name)
        latest = await load_template(conn, body.name)
        if latest is not None and latest["text"] == body.text and dict(latest["bodies"]) == body.bodies:
            response.status_code = 200  # the same template again: nothing new to store
            return {"name": body.name, "version": latest["version"], "created": False, **describe(parsed)}
        version = (latest["version"] if latest else 0) + 1
        await conn.execute("INSERT INTO templates (name, version, text, bodies) VALUES ($1, $2, $3, $4)",
                           body.name, version, body.text, body.bodies)
        await audit(conn, "template-added", f"template {body.name} version {version} registered",
                    data={"name": body.name, "version": version})
    return {"name": body.name, "version": version, "created": True, **describe(parsed)}


@router.get("", dependencies=[READER], summary="Every template (latest version)")
async def list_templates(db: asyncpg.Pool = POOL) -> dict[str, Any]:
    rows = await db.fetch(
        "SELECT DISTINCT ON (name) name, version, created_at, count(*) OVER (PARTITION BY name) AS versions"
        " FROM templates ORDER BY name, version DESC")
    items = [dict(r) for r in rows]
    return {"items": items, "total": len(items), "limit": len(items), "offset": 0}


@router.get("/{name}", dependencies=[READER], summary="One template: its text, bodies, items and mapped paths")
async def get_template(name: str, version: int | None = Query(None, ge=1, le=2_000_000_000),
                       db: asyncpg.Pool = POOL) -> dict[str, Any]:
    row = await load_template(db, f"{name}@{version}" if version else name)
    if row is None:
        raise HTTPException(404, f"unknown template {name!r}" + (f" version {version}" if version else ""))
    versions = await db.fetch("SELECT version FROM templates WHERE name = $1 ORDER BY version", name)
    out = dict(row)
    out["bodies"] = dict(row["bodies"])
    out["versions"] = [v["version"] for v in versions]
    out.update(describe(parse(row["text"])))
    return out
