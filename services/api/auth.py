"""Bearer tokens with two roles. Only sha256 digests of the tokens are kept; a
presented token is hashed and compared with every digest in constant time."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from services.common.errors import ConfigError


class Role(StrEnum):
    READER = "reader"
    ADMIN = "admin"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenBook:
    entries: tuple[tuple[bytes, Role], ...]

    @classmethod
    def parse(cls, spec: str) -> TokenBook:
        """``"admin:TOKEN,reader:TOKEN2"``; raises ConfigError quoting the bad entry."""
        entries = []
        for raw in spec.split(","):
            part = raw.strip()
            if not part:
                continue
            role, sep, token = part.partition(":")
            if not sep or not token.strip():
                raise ConfigError(f"EVACUATE_API_TOKENS: entry {role.strip()!r}... is not role:token")
            try:
                entries.append((digest(token.strip()), Role(role.strip())))
            except ValueError:
                raise ConfigError(
                    f"EVACUATE_API_TOKENS: role {role.strip()!r} is not one of: admin, reader"
                ) from None
        return cls(tuple(entries))

    def role_of(self, token: str) -> Role | None:
        presented = digest(token)
        found: Role | None = None
        for stored, role in self.entries:  # no early exit: the time does not depend on which entry matched
            if hmac.compare_digest(presented, stored) and found is None:
                found = role
        return found


def allows(have: Role, need: Role) -> bool:
    return have is Role.ADMIN or need is Role.READER
