"""What every route depends on: the caller's role (bearer token) and the database pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.auth import Role, TokenBook, allows

bearer = HTTPBearer(auto_error=False, description="A token from EVACUATE_API_TOKENS (role admin or reader)")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def role_of(request: Request, token: str | None, need: Role) -> Role:
    if not token:
        raise HTTPException(401, "missing bearer token (send 'Authorization: Bearer <token>')", headers=CHALLENGE)
    book: TokenBook = request.app.state.tokens
    have = book.role_of(token)
    if have is None:
        raise HTTPException(401, "invalid token", headers=CHALLENGE)
    if not allows(have, need):
        raise HTTPException(403, f"this needs the {need} role; the token has the {have} role")
    return have


def bearer_token(creds: HTTPAuthorizationCredentials | None) -> str | None:
    if creds is None or creds.scheme.lower() != "bearer":
        return None
    return creds.credentials or None


def require(need: Role) -> Callable[..., Awaitable[Role]]:
    async def caller_role(request: Request,
                          creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Role:
        return role_of(request, bearer_token(creds), need)

    return caller_role


def require_header_or_query(need: Role) -> Callable[..., Awaitable[Role]]:
    """For the event stream only: a browser's EventSource cannot set headers."""
    async def caller_role(request: Request,
                          creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                          access_token: Annotated[str | None, Query(
                              max_length=500, description="The token, for clients that cannot send headers "
                              "(EventSource); the Authorization header wins")] = None) -> Role:
        return role_of(request, bearer_token(creds) or access_token, need)

    return caller_role


def pool(request: Request) -> asyncpg.Pool:
    p: asyncpg.Pool = request.app.state.pool
    return p


READER = Depends(require(Role.READER))
READER_HEADER_OR_QUERY = Depends(require_header_or_query(Role.READER))
ADMIN = Depends(require(Role.ADMIN))
POOL = Depends(pool)
