"""The value types of metadata items.

Each type checks a user value (always a string) and says why it is refused;
``str()`` of a type is its spelling in the template language.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from services.templater._lexer import encode_string

_INT_RE = re.compile(r"-?[0-9]+")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_EMAIL_LOCAL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}")


class ValueType:
    """Base of the metadata value types."""

    name = ""

    def check(self, value: str) -> str | None:
        """None when ``value`` is valid, else the reason it is not."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


def _check_bounds(minimum: int | None, maximum: int | None) -> None:
    if (minimum is None) != (maximum is None):
        raise ValueError("give both bounds or neither")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"minimum {minimum} is above maximum {maximum}")


@dataclass(frozen=True, slots=True)
class StringType(ValueType):
    """Text whose length (in characters) lies within the bounds; no bounds: any text."""

    min_length: int | None = None
    max_length: int | None = None
    name = "string"

    def __post_init__(self) -> None:
        _check_bounds(self.min_length, self.max_length)
        if self.min_length is not None and self.min_length < 0:
            raise ValueError(f"minimum length {self.min_length} is negative")

    def check(self, value: str) -> str | None:
        if self.min_length is not None and len(value) < self.min_length:
            return f"length {len(value)} is below the minimum {self.min_length}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"length {len(value)} is above the maximum {self.max_length}"
        return None

    def __str__(self) -> str:
        if self.min_length is None:
            return "string"
        return f"string({self.min_length},{self.max_length})"


@dataclass(frozen=True, slots=True)
class IntType(ValueType):
    """A decimal integer within the bounds; no bounds: any integer."""

    minimum: int | None = None
    maximum: int | None = None
    name = "int"

    def __post_init__(self) -> None:
        _check_bounds(self.minimum, self.maximum)

    def check(self, value: str) -> str | None:
        if not _INT_RE.fullmatch(value):
            return "not a decimal integer"
        number = int(value)
        if self.minimum is not None and number < self.minimum:
            return f"{number} is below the minimum {self.minimum}"
        if self.maximum is not None and number > self.maximum:
            return f"{number} is above the maximum {self.maximum}"
        return None

    def __str__(self) -> str:
        if self.minimum is None:
            return "int"
        return f"int({self.minimum},{self.maximum})"


@dataclass(frozen=True, slots=True)
class BoolType(ValueType):
    name = "bool"

    def check(self, value: str) -> str | None:
        return None if value in ("true", "false") else 'valid values are "true" and "false"'


@dataclass(frozen=True, slots=True)
class IpType(ValueType):
    """An IPv4 or IPv6 address."""

    name = "ip"

    def check(self, value: str) -> str | None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "not an IPv4 or IPv6 address"
        return None


@dataclass(frozen=True, slots=True)
class CidrType(ValueType):
    """A network as address/prefix with no host bits set (10.0.0.0/8, 2001:db8::/32)."""

    name = "cidr"

    def check(self, value: str) -> str | None:
        if "/" not in value:
            return "not in CIDR notation (address/prefix)"
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            return f"not a network in CIDR notation ({exc})"
        return None


def hostname_problem(value: str) -> str | None:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    if not value or len(value) > 253:
        return "a host name has 1 to 253 characters"
    for label in value.split("."):
        if not _LABEL_RE.fullmatch(label):
            return (
                f"label {label!r} is not 1 to 63 letters, digits or hyphens "
                "(not starting or ending with a hyphen)"
            )
    return None


@dataclass(frozen=True, slots=True)
class HostnameType(ValueType):
    name = "hostname"

    def check(self, value: str) -> str | None:
        return hostname_problem(value)


@dataclass(frozen=True, slots=True)
class EmailType(ValueType):
    """local@domain, with a dotted host name as domain."""

    name = "email"

    def check(self, value: str) -> str | None:
        if len(value) > 254:
            return "an address has at most 254 characters"
        local, at, domain = value.rpartition("@")
        if not at:
            return "no '@' in the address"
        if not _EMAIL_LOCAL_RE.fullmatch(local) or local.startswith(".") or ".." in local:
            return f"invalid local part {local!r}"
        if "." not in domain:
            return f"domain {domain!r} has no dot"
        problem = hostname_problem(domain)
        return None if problem is None else f"invalid domain: {problem}"


@dataclass(frozen=True, slots=True)
class EnumType(ValueType):
    """One of a fixed list of strings."""

    choices: tuple[str, ...] = ()
    name = "enum"

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("an enum needs at least one choice")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("an enum lists a choice twice")

    def check(self, value: str) -> str | None:
        if value in self.choices:
            return None
        return "valid values are " + ", ".join(encode_string(c) for c in self.choices)

    def __str__(self) -> str:
        return "enum(" + ",".join(encode_string(c) for c in self.choices) + ")"


SIMPLE_TYPES: dict[str, ValueType] = {
    t.name: t for t in (BoolType(), IpType(), CidrType(), HostnameType(), EmailType())
}
TYPE_NAMES: tuple[str, ...] = tuple(sorted([*SIMPLE_TYPES, "string", "int", "enum"]))
