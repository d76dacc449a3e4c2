"""Every message on the bus: one frozen pydantic model per type, inside one envelope.

The envelope is DESIGN §2: ``{"type", "version", "id", "at", "source", "data"}``.
``TOPICS`` is the topic catalogue; it is derived from the models, not written twice.
A change of a model's JSON schema must bump its ``VERSION`` (tests/test_schemas.py
keeps a fingerprint of every schema).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Re-exported: the inventory parts live in domain_info, every message is importable from here.
from services.common.domain_info import Disk, DomainInfo, Nic, PowerState  # noqa: F401
from services.common.errors import BadMessage


class Topic(StrEnum):
    HEARTBEATS = "evacuate.heartbeats"
    HOST_EVENTS = "evacuate.host-events"
    PLANS = "evacuate.plans"
    ORDERS = "evacuate.orders"
    RESULTS = "evacuate.results"
    EVACUATIONS = "evacuate.evacuations"
    DEAD_LETTER = "evacuate.dead-letter"


class Message(BaseModel):
    """Base of every message body. Subclasses set TOPIC, VERSION and a key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TOPIC: ClassVar[Topic]
    VERSION: ClassVar[int] = 1

    def key(self) -> str:
        raise NotImplementedError


# --- executor -> detector / inventory -------------------------------------------------


class HostHeartbeat(Message):
    TOPIC = Topic.HEARTBEATS
    host: str
    seq: int
    fence_driver: str = "process"
    fence_target: str = ""  # what the fence driver acts on: a pid, a BMC address, ...
    storage_ok: bool = True

    def key(self) -> str:
        return self.host


class InstanceReport(Message):
    """The full inventory of one host: every domain it has defined."""

    TOPIC = Topic.HEARTBEATS
    host: str
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    domains: tuple[DomainInfo, ...]

    def key(self) -> str:
        return self.host


# --- detector -> anyone ---------------------------------------------------------------


class HostEvent(Message):
    TOPIC = Topic.HOST_EVENTS
    host: str
    reason: str

    def key(self) -> str:
        return self.host


class HostSuspect(HostEvent):
    pass


class NodeDown(HostEvent):
    fenced_by: str


class NodeUp(HostEvent):
    pass


class HostIsolated(HostEvent):
    pass


class FenceFailed(HostEvent):
    attempt: int


class HostCommand(Message):
    """An operator's command to the detector (from the API): put a host into or out of
    maintenance, confirm it is powered off (the `manual` fence), evacuate an isolated
    host anyway, or suspect it (an outside monitor reported it stopped: the detector
    still needs a fence or expired leases before NodeDown). Version 2 adds `suspect`.
    It travels with the host's heartbeats (same topic, same key) so that the
    detector that owns the host's partition, and only it, applies it in order."""

    TOPIC = Topic.HEARTBEATS
    VERSION = 2
    host: str
    command: Literal["maintenance", "enable", "confirm_off", "force_down", "suspect"]
    requested_by: str = "operator"

    def key(self) -> str:
        return self.host


# --- planner / API -> templater -------------------------------------------------------


class EvacuationRequested(Message):
    """A manual evacuation from an operator. Shares the planner path with NodeDown.
    Named instances are moved even with HA off (HA means "automatically"). Version 2:
    `leave_stopped` rebuilds every instance stopped, whatever its power state was
    (Nova's evacuate from microversion 2.95)."""

    TOPIC = Topic.PLANS
    VERSION = 2
    host: str
    target: str | None = None
    instances: tuple[str, ...] = ()  # empty: every HA instance of the host
    requested_by: str = "operator"
    leave_stopped: bool = False

    def key(self) -> str:
        return self.host


class Assignment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    item_id: str
    instance_uuid: str
    instance_name: str
    target: str
    attempt: int
    xml: str
    power_state: PowerState
    template: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class EvacuationPlan(Message):
    TOPIC = Topic.PLANS
    evacuation_id: str
    source: str
    assignments: tuple[Assignment, ...]

    def key(self) -> str:
        return self.source


# --- templater/planner -> executor ----------------------------------------------------


class RebuildOrder(Message):
    """A config drive travels inline (base64) when small, else as a file on the shared
    storage with its sha256, which the executor checks before attaching it."""

    TOPIC = Topic.ORDERS
    VERSION = 2
    order_id: str
    evacuation_id: str
    item_id: str
    source: str
    target: str
    instance_uuid: str
    instance_name: str
    attempt: int
    xml: str
    power_state: PowerState
    config_drive_b64: str | None = None
    config_drive_path: str | None = None
    config_drive_sha256: str | None = None

    def key(self) -> str:
        return self.target


class CleanupOrder(Message):
    TOPIC = Topic.ORDERS
    host: str
    instances: tuple[str, ...]  # uuids of stale copies to destroy and undefine

    def key(self) -> str:
        return self.host


# --- executor -> planner --------------------------------------------------------------


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    ok: bool
    seconds: float
    detail: str = ""


class RebuildResult(Message):
    TOPIC = Topic.RESULTS
    order_id: str
    evacuation_id: str
    item_id: str
    instance_uuid: str
    host: str
    attempt: int
    ok: bool
    error: str | None = None
    retryable: bool = True  # False: another host would fail the same way (e.g. a template error)
    power_state: PowerState | None = None
    steps: tuple[Step, ...] = ()

    def key(self) -> str:
        return self.evacuation_id


class CleanupResult(Message):
    # Sent with the host's heartbeats: the detector that owns the host ends its return.
    TOPIC = Topic.HEARTBEATS
    host: str
    destroyed: tuple[str, ...]
    errors: tuple[str, ...] = ()

    def key(self) -> str:
        return self.host


# --- planner -> anyone ----------------------------------------------------------------


class EvacuationCompleted(Message):
    TOPIC = Topic.EVACUATIONS
    evacuation_id: str
    source: str
    status: Literal["completed", "completed_with_errors", "failed"]
    placed: int
    failed: int
    seconds: float

    def key(self) -> str:
        return self.evacuation_id


# --- dead letters ---------------------------------------------------------------------


class DeadLetter(Message):
    TOPIC = Topic.DEAD_LETTER
    topic: str
    partition: int
    offset: int
    original_key: str | None
    original: str  # the original bytes, decoded as UTF-8 with backslash escapes
    reason: str
    consumer: str

    def key(self) -> str:
        return self.original_key or ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        HostHeartbeat,
        InstanceReport,
        HostSuspect,
        NodeDown,
        NodeUp,
        HostIsolated,
        FenceFailed,
        HostCommand,
        EvacuationRequested,
        EvacuationPlan,
        RebuildOrder,
        CleanupOrder,
        RebuildResult,
        CleanupResult,
        EvacuationCompleted,
        DeadLetter,
    )
}

TOPICS: dict[Topic, tuple[str, ...]] = {
    topic: tuple(sorted(n for n, c in MESSAGE_TYPES.items() if topic == c.TOPIC))
    for topic in Topic
}


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str
    version: int
    id: str
    at: datetime
    source: str
    data: dict[str, Any]

    @field_validator("id")
    @classmethod
    def _id_is_uuid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError(f"id {v!r} is not a UUID") from None


def now_utc() -> datetime:
    return datetime.now(UTC)


def wrap(message: Message, source: str, message_id: str | None = None) -> Envelope:
    return Envelope(
        type=type(message).__name__,
        version=type(message).VERSION,
        id=message_id or str(uuid.uuid4()),
        at=now_utc(),
        source=source,
        data=message.model_dump(mode="json"),
    )


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode(raw: bytes | None) -> tuple[Envelope, Message]:
    """Parse bytes off the bus. Raises BadMessage with a reason for anything unusable."""
    env = decode_envelope(raw)
    return env, decode_body(env)


def decode_envelope(raw: bytes | None) -> Envelope:
    """The envelope alone, its type known and its version readable: a consumer that does
    not handle this type skips it without validating a body it will not use (an
    InstanceReport carries every domain's XML)."""
    if raw is None:
        raise BadMessage("empty message (tombstone)")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    try:
        env = Envelope.model_validate(obj)
    except ValidationError as exc:
        raise BadMessage(f"bad envelope: {_first_error(exc)}") from None
    cls = MESSAGE_TYPES.get(env.type)
    if cls is None:
        raise BadMessage(f"unknown message type {env.type!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    if not 1 <= env.version <= cls.VERSION:
        # Versions only add fields with defaults, so an older message still reads.
        raise BadMessage(
            f"{env.type} version {env.version} is not supported (this consumer reads versions 1 to {cls.VERSION})"
        )
    return env


def decode_body(env: Envelope) -> Message:
    try:
        return MESSAGE_TYPES[env.type].model_validate(env.data)
    except ValidationError as exc:
        raise BadMessage(f"{env.type} fails its schema: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = []
    for e in errs[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more
