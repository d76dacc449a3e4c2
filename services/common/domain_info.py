"""What an executor reports of one domain (part of InstanceReport): identity, power
state, size, disks and NICs, and whether it can be evacuated."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class PowerState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


class Disk(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    target: str
    path: str
    shared: bool


class Nic(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    mac: str
    ip: str | None = None


class DomainInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    uuid: str
    name: str
    power_state: PowerState
    vcpus: int
    memory_mib: int
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    evacuable: bool
    not_evacuable_reason: str | None = None
    xml: str
