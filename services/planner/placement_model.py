"""The plain data the placement core reads and returns.

Everything here is a frozen dataclass or an enum so a plan can be compared, logged and
replayed. Import these names from :mod:`services.planner.placement`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


@dataclass(frozen=True, slots=True)
class Flavor:
    """What an instance needs (or what a host has used): vCPUs, RAM in MiB, disk in GiB."""

    vcpus: int
    memory_mib: int
    disk_gib: int

    def __post_init__(self) -> None:
        if self.vcpus < 0 or self.memory_mib < 0 or self.disk_gib < 0:
            raise ValueError(
                f"flavor {self.vcpus} vCPU / {self.memory_mib} MiB / {self.disk_gib} GiB "
                "has a negative amount; every amount must be 0 or more"
            )

    def __add__(self, other: Flavor) -> Flavor:
        return Flavor(
            self.vcpus + other.vcpus,
            self.memory_mib + other.memory_mib,
            self.disk_gib + other.disk_gib,
        )

    def describe(self) -> str:
        return f"{self.vcpus} vCPU / {self.memory_mib} MiB RAM / {self.disk_gib} GiB disk"


NO_USAGE = Flavor(0, 0, 0)


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A compute host as the planner sees it.

    Allowed amount of a resource is ``floor(physical × ratio)`` (like Nova placement's
    overcommit); what is free is that minus ``used``.
    """

    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    up: bool = True
    enabled: bool = True
    reserved: bool = False
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    used: Flavor = NO_USAGE
    aggregates: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for label, ratio in (
            ("cpu_ratio", self.cpu_ratio),
            ("ram_ratio", self.ram_ratio),
            ("disk_ratio", self.disk_ratio),
        ):
            if not ratio > 0:
                raise ValueError(f"host {self.name!r}: {label} {ratio!r} must be above 0")


class Priority(IntEnum):
    """Restart priority levels: higher is more important and is placed first.

    ``InstanceInfo.priority`` is a plain int; any int sorts, these name the usual levels.
    """

    LOWEST = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    HIGHEST = 4


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """An instance; only those on a failed host are placed, the others locate group members.

    ``aggregate``: when set, only hosts in that aggregate qualify as targets.
    """

    uuid: str
    name: str
    host: str
    flavor: Flavor
    ha: bool = True
    priority: int = Priority.MEDIUM
    group: str | None = None
    evacuable: bool = True
    not_evacuable_reason: str | None = None
    aggregate: str | None = None


class GroupPolicy(StrEnum):
    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti-affinity"
    SOFT_ANTI_AFFINITY = "soft-anti-affinity"


@dataclass(frozen=True, slots=True)
class ServerGroup:
    """A server group; ``members`` are instance uuids, including ones on healthy hosts."""

    name: str
    policy: GroupPolicy
    members: frozenset[str] = frozenset()


class RecoveryMethod(StrEnum):
    """Which hosts may receive a failed host's instances (Masakari's recovery methods)."""

    AUTO = "auto"  # non-reserved hosts only
    RESERVED_HOST = "reserved_host"  # reserved hosts only
    AUTO_PRIORITY = "auto_priority"  # non-reserved first, then reserved
    RH_PRIORITY = "rh_priority"  # reserved first, then non-reserved


@dataclass(frozen=True)
class Policy:
    """Operator choices for one plan.

    ``recovery``: failed host -> method (others use ``default_recovery``).
    ``target``: operator-chosen host for a manual evacuation; overrides the method.
    ``exclude``: instance uuid -> hosts that already failed to rebuild it (retries).
    """

    recovery: Mapping[str, RecoveryMethod] = field(default_factory=dict)
    default_recovery: RecoveryMethod = RecoveryMethod.AUTO
    target: str | None = None
    exclude: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def method_for(self, failed_host: str) -> RecoveryMethod:
        return self.recovery.get(failed_host, self.default_recovery)


class AssignmentStatus(StrEnum):
    PLACED = "placed"
    NO_CAPACITY = "no_capacity"
    NOT_EVACUABLE = "not_evacuable"
    HA_OFF = "ha_off"


@dataclass(frozen=True, slots=True)
class Assignment:
    """The decision for one instance; ``reason`` is always set (it is the audit trail)."""

    instance_uuid: str
    instance_name: str
    source: str
    target: str | None
    status: AssignmentStatus
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The placement of every instance of the failed hosts, highest priority first.

    ``refused`` is set (and ``assignments`` empty) when the operator's target is invalid.
    ``reserved_taken`` lists the reserved hosts this plan started using, in order.
    """

    assignments: tuple[Assignment, ...]
    refused: str | None = None
    reserved_taken: tuple[str, ...] = ()
