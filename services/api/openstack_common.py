"""What the OpenStack front doors (Nova under /compute, Masakari under /instance-ha)
share: their error shape, their token header, microversion headers and request bodies.

Errors are Nova's (and Masakari's) faults: ``{"itemNotFound": {"message": ..., "code":
404}}``, raised as `Fault` and rendered by `on_fault`, which app.py registers for this
exception only, so the rest of the API keeps its own error shape. The routes here take no
FastAPI-validated bodies or typed parameters: they parse and validate themselves and
raise Fault, never a RequestValidationError that would answer in the other shape.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from services.api.auth import Role, TokenBook, allows

FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
               409: "conflictingRequest", 413: "overLimit", 415: "badMediaType", 429: "overLimit",
               501: "notImplemented", 503: "serviceUnavailable"}
HEADERS_KEY = "openstack_headers"  # request.state attribute: headers every answer carries (microversion)


class Fault(Exception):
    """An OpenStack-style error answer: HTTP status plus a message that says what was wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        if self.status == 401:  # keystonemiddleware's shape
            return {"error": {"code": 401, "title": "Unauthorized", "message": self.message}}
        return {FAULT_NAMES.get(self.status, "computeFault"): {"message": self.message, "code": self.status}}


def state_headers(request: Request) -> dict[str, str]:
    return dict(getattr(request.state, HEADERS_KEY, {}) or {})


async def on_fault(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Fault)
    return JSONResponse(exc.body(), status_code=exc.status, headers={**state_headers(request), **exc.headers})


def from_http(exc: HTTPException) -> Fault:
    """Our own API's answer (the shared command path) as an OpenStack fault."""
    detail = exc.detail
    message = str(detail.get("message", detail)) if isinstance(detail, dict) else str(detail)
    return Fault(400 if exc.status_code == 422 else exc.status_code, message)


def reply(request: Request, body: Any, status: int = 200) -> Response:
    headers = state_headers(request)
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


# --- auth ------------------------------------------------------------------------------


def require(need: Role) -> Callable[..., Awaitable[Role]]:
    """The token comes in X-Auth-Token (as from keystoneauth), or as our bearer token."""

    async def caller_role(request: Request) -> Role:
        token = request.headers.get("x-auth-token", "").strip()
        if not token:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        challenge = {"WWW-Authenticate": "Keystone uri=\"\""}
        if not token:
            raise Fault(401, "The request you have made requires authentication: send X-Auth-Token "
                        "(or Authorization: Bearer) with a token from EVACUATE_API_TOKENS", challenge)
        book: TokenBook = request.app.state.tokens
        have = book.role_of(token)
        if have is None:
            raise Fault(401, "The token is not valid", challenge)
        if not allows(have, need):
            raise Fault(403, f"Policy doesn't allow this: it needs the {need} role; the token has the {have} role")
        return have

    return caller_role


READER = Depends(require(Role.READER))
ADMIN = Depends(require(Role.ADMIN))


# --- bodies ----------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


async def json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Fault(400, f"Malformed request body: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Fault(400, f"Malformed request body: expected a JSON object, got {type(data).__name__}")
    return data


def member(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``{"segment": {...}}`` -> the inner object; 400 naming the key otherwise."""
    inner = data.get(key)
    if not isinstance(inner, dict):
        raise Fault(400, f"Invalid input: the body must be {{\"{key}\": {{...}}}}; got keys {sorted(data)}")
    return inner


def validated(model: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or what
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            raise Fault(400, f"Invalid input for {what}: additional properties are not allowed "
                        f"({field!r} was unexpected)") from None
        raise Fault(400, f"Invalid input for field/attribute {field}. Value: {value!r}. {e['msg']}") from None


# --- microversions ---------------------------------------------------------------------

VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Microversions:
    """One service's microversion range and headers (``OpenStack-API-Version: compute 2.95``,
    and the legacy header when the service has one)."""

    service_type: str
    minimum: tuple[int, int]
    maximum: tuple[int, int]
    legacy_header: str = ""

    @staticmethod
    def text(v: tuple[int, int]) -> str:
        return f"{v[0]}.{v[1]}"

    def requested(self, headers: dict[str, str]) -> str | None:
        """The version asked for: OpenStack-API-Version wins over the legacy header."""
        for part in headers.get("openstack-api-version", "").split(","):
            service, _, version = part.strip().partition(" ")
            if service.strip().lower() == self.service_type and version.strip():
                return version.strip()
        legacy = headers.get(self.legacy_header.lower(), "").strip() if self.legacy_header else ""
        return legacy or None

    def parse(self, headers: dict[str, str]) -> tuple[int, int]:
        """The version to serve; Fault 400 for a malformed one, 406 for one out of range."""
        asked = self.requested(headers)
        if asked is None:
            return self.minimum
        if asked.lower() == "latest":
            return self.maximum
        m = VERSION_RE.match(asked)
        if m is None:
            raise Fault(400, f"API Version String {asked!r} is of invalid format. Must be of format "
                        "MajorNum.MinorNum (or 'latest')")
        v = (int(m.group(1)), int(m.group(2)))
        if not self.minimum <= v <= self.maximum:
            raise Fault(406, f"Version {asked} is not supported by the API. Minimum is "
                        f"{self.text(self.minimum)} and maximum is {self.text(self.maximum)}.")
        return v

    def response_headers(self, v: tuple[int, int]) -> dict[str, str]:
        out = {"OpenStack-API-Version": f"{self.service_type} {self.text(v)}"}
        vary = ["OpenStack-API-Version"]
        if self.legacy_header:
            out[self.legacy_header] = self.text(v)
            vary.append(self.legacy_header)
        out["Vary"] = ", ".join(vary)
        return out

    def dependency(self) -> Callable[[Request], tuple[int, int]]:
        def version(request: Request) -> tuple[int, int]:
            headers = {k.lower(): v for k, v in request.headers.items()}
            v = self.parse(headers)
            setattr(request.state, HEADERS_KEY, self.response_headers(v))
            return v

        return version


def catch_all(router: APIRouter, what: str) -> None:
    """Answer any other path under the router's prefix in the OpenStack shape (added last)."""

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: Request, rest: str) -> Response:
        raise Fault(404, f"{what} has no {request.method} /{rest}")


def int_or_uuid(value: str) -> tuple[int | None, str | None]:
    """A path id that may be a row id or a uuid (as Masakari accepts)."""
    if value.isdigit() and len(value) < 18:
        return int(value), None
    try:
        return None, str(uuid.UUID(value))
    except ValueError:
        return None, None
