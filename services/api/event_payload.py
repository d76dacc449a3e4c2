"""What the live event stream carries: which messages (host state changes and
evacuation progress, never the heartbeat flood) and the JSON payload of each, with a
one-line text for people. Pure: an envelope in, a dict out."""

from __future__ import annotations

from typing import Any

from services.common.schemas import (
    CleanupOrder,
    DeadLetter,
    Envelope,
    EvacuationCompleted,
    EvacuationPlan,
    EvacuationRequested,
    FenceFailed,
    HostEvent,
    Message,
    NodeDown,
    RebuildOrder,
    RebuildResult,
    Topic,
)

# Topics read for the stream. evacuate.heartbeats (heartbeats, inventories, host
# commands) is left out on purpose: it is the flood, and every state change it causes
# comes out on evacuate.host-events.
TOPICS: tuple[Topic, ...] = (Topic.HOST_EVENTS, Topic.PLANS, Topic.ORDERS, Topic.RESULTS, Topic.EVACUATIONS,
                             Topic.DEAD_LETTER)
HOST_TYPES = ("HostSuspect", "HostIsolated", "FenceFailed", "NodeDown", "NodeUp")
EVACUATION_TYPES = ("EvacuationRequested", "EvacuationPlan", "RebuildOrder", "CleanupOrder", "RebuildResult",
                    "EvacuationCompleted")
TYPES: tuple[str, ...] = (*HOST_TYPES, *EVACUATION_TYPES, "DeadLetter")

# Fields too big or too private for a status stream: domain XML, config drives, raw messages.
DROPPED = frozenset({"xml", "config_drive_b64", "original", "metadata"})
HOST_STATE_OF = {"HostSuspect": "suspect", "HostIsolated": "isolated", "FenceFailed": "fencing", "NodeDown": "down",
                 "NodeUp": "up"}


def slim(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: slim(v) for k, v in value.items() if k not in DROPPED}
    if isinstance(value, list):
        return [slim(v) for v in value]
    return value


def text_of(msg: Message) -> str:
    """One line for people: what happened, to which host or instance, and why."""
    if isinstance(msg, NodeDown):
        if msg.fenced_by in msg.reason:
            return f"{msg.host} down: {msg.reason}"
        return f"{msg.host} down: fenced by {msg.fenced_by} ({msg.reason})"
    if isinstance(msg, FenceFailed):
        return f"fencing {msg.host} failed (attempt {msg.attempt}): {msg.reason}"
    if isinstance(msg, HostEvent):
        return f"{msg.host} {HOST_STATE_OF.get(type(msg).__name__, type(msg).__name__)}: {msg.reason}"
    if isinstance(msg, EvacuationRequested):
        to = f" to {msg.target}" if msg.target else ""
        which = f" ({len(msg.instances)} instances)" if msg.instances else ""
        return f"evacuation of {msg.host}{to}{which} requested by {msg.requested_by}"
    if isinstance(msg, EvacuationPlan):
        moves = ", ".join(f"{a.instance_name} -> {a.target}" for a in msg.assignments[:5])
        more = f", +{len(msg.assignments) - 5} more" if len(msg.assignments) > 5 else ""
        return f"plan for {msg.source}: {len(msg.assignments)} to rebuild ({moves}{more})"
    if isinstance(msg, RebuildOrder):
        return f"rebuild of {msg.instance_name} on {msg.target} ordered (attempt {msg.attempt})"
    if isinstance(msg, CleanupOrder):
        return f"cleanup of {len(msg.instances)} stale domains on {msg.host} ordered"
    if isinstance(msg, RebuildResult):
        if msg.ok:
            return f"instance {msg.instance_uuid} rebuilt on {msg.host} ({msg.power_state or 'state unknown'})"
        return f"rebuild of {msg.instance_uuid} on {msg.host} failed (attempt {msg.attempt}): {msg.error}"
    if isinstance(msg, EvacuationCompleted):
        return (f"evacuation of {msg.source} {msg.status}: {msg.placed} rebuilt, {msg.failed} not,"
                f" in {msg.seconds:.1f}s")
    if isinstance(msg, DeadLetter):
        return f"dead letter from {msg.consumer} ({msg.topic}[{msg.partition}]@{msg.offset}): {msg.reason}"
    return type(msg).__name__


def host_of(msg: Message) -> str | None:
    """The host the event is about: the failed host for a plan, an order or the end of an
    evacuation; where it ran for a rebuild result."""
    if isinstance(msg, (EvacuationPlan, RebuildOrder, EvacuationCompleted)):
        return msg.source
    value = getattr(msg, "host", None)
    return value if isinstance(value, str) else None


def payload(topic: str, env: Envelope, msg: Message) -> dict[str, Any]:
    """The stream's JSON for one message. ``id`` is the message id (also the SSE event id)."""
    kind = "host" if env.type in HOST_TYPES else "evacuation" if env.type in EVACUATION_TYPES else "other"
    return {
        "id": env.id,
        "type": env.type,
        "kind": kind,
        "at": env.at.isoformat(),
        "source": env.source,
        "topic": topic,
        "host": host_of(msg),
        "state": HOST_STATE_OF.get(env.type),
        "evacuation_id": getattr(msg, "evacuation_id", None),
        "text": text_of(msg),
        "data": slim(env.data),
    }
