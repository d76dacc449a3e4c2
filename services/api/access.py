"""What every route depends on: the caller's role (bearer token) and the database pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.auth import Role, TokenBook, allows

bearer = HTTPBearer(auto_error=False, description="A token from EVACUATE_API_TOKENS (role admin or reader)")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(need: Role) -> Callable[..., Awaitable[Role]]:
    async def caller_role(request: Request,
                          creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Role:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(401, "missing bearer token (send 'Authorization: Bearer <token>')",
                                headers=CHALLENGE)
        book: TokenBook = request.app.state.tokens
        have = book.role_of(creds.credentials)
        if have is None:
            raise HTTPException(401, "invalid token", headers=CHALLENGE)
        if not allows(have, need):
            raise HTTPException(403, f"this needs the {need} role; the token has the {have} role")
        return have

    return caller_role


def pool(request: Request) -> asyncpg.Pool:
    p: asyncpg.Pool = request.app.state.pool
    return p


READER = Depends(require(Role.READER))
ADMIN = Depends(require(Role.ADMIN))
POOL = Depends(pool)
