"""The failure detector's rules (used by `failure_detector.py`): the legal state
changes and the one function that makes them, and the judgements and steps a host's
events share — is it silent, is its storage heartbeat alive, are its leases expired,
start or fail a fence round, declare it down.

Pure like the rest of the core: no I/O, no clock."""

from __future__ import annotations

from dataclasses import replace

from services.common.errors import EvacuateError
from services.detector.fd_model import (
    EPSILON,
    CleanupDone,
    Effect,
    FenceResult,
    Heartbeat,
    HostRecord,
    HostState,
    LogLine,
    Operator,
    Publish,
    RequestFence,
    StorageHeartbeat,
    Timings,
)

S = HostState

TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    S.up: frozenset({S.suspect, S.maintenance}),
    S.suspect: frozenset({S.up, S.isolated, S.fencing, S.down, S.maintenance}),
    S.isolated: frozenset({S.up, S.down, S.maintenance}),
    S.fencing: frozenset({S.down}),
    S.down: frozenset({S.returning}),
    S.returning: frozenset({S.up, S.down, S.maintenance}),
    S.maintenance: frozenset({S.up}),
}



class InvalidTransition(EvacuateError):
    """The detector tried a state change that is not in TRANSITIONS (a bug)."""


Step = tuple[HostRecord, list[Effect]]
HostEvent = Heartbeat | StorageHeartbeat | FenceResult | Operator | CleanupDone


def _transition(
    rec: HostRecord, to: HostState, at: float, reason: str, **changes: object
) -> Step:
    if to not in TRANSITIONS[rec.state]:
        allowed = ", ".join(sorted(TRANSITIONS[rec.state])) or "nothing"
        raise InvalidTransition(
            f"host {rec.name!r}: {rec.state} -> {to} is not allowed"
            f" (from {rec.state} only to {allowed})"
        )
    new = replace(rec, state=to, since=at, reason=reason, **changes)  # type: ignore[arg-type]
    return new, [LogLine(f"host {rec.name!r}: {rec.state} -> {to} ({reason})")]


def _with(rec: HostRecord, **changes: object) -> HostRecord:
    """`dataclasses.replace` for the hot path (every heartbeat): a copy with some
    fields changed, without re-running the constructor (HostRecord has no checks in
    it). Several times faster; same result."""
    new = object.__new__(HostRecord)
    new.__dict__.update(rec.__dict__)
    new.__dict__.update(changes)
    return new


def _ignored(rec: HostRecord | None, name: str, what: str, why: str = "") -> list[Effect]:
    state = rec.state if rec is not None else "unknown"
    return [LogLine(f"host {name!r} ({state}): ignored {what}" + (f": {why}" if why else ""))]


def _elapsed(at: float, since: float | None, span: float) -> bool:
    """At least `span` seconds passed from `since` to `at`."""
    return since is not None and at - since >= span - EPSILON


def _age(at: float, t: float | None) -> str:
    return "never seen" if t is None else f"{at - t:.1f} s old"


def _storage_alive(rec: HostRecord, at: float, t: Timings) -> bool:
    """The host kept writing its storage heartbeat after its bus heartbeats stopped.

    Freshness alone is not enough: a host that just died still has a fresh storage
    heartbeat, written together with its last bus heartbeat. Only one written at least
    an interval after the last bus heartbeat shows the host is alive, only cut off."""
    last = rec.last_storage_heartbeat
    bus = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
    return (last is not None and not _elapsed(at, last, t.storage_timeout)
            and _elapsed(last, bus, t.heartbeat_interval))


def _leases_expired(rec: HostRecord, at: float, t: Timings) -> bool:
    # A host that never wrote a storage heartbeat proves nothing by staying silent.
    return _elapsed(at, rec.last_storage_heartbeat, t.lease_expiry)


# A host suspected on an outside report is judged once it missed this many heartbeats (or
# suspect_after, if shorter): by then the storage leases of its VMs have run out (the
# executor's lease timeout is 2.5 heartbeat intervals), so a target can take them.
REPORTED_MISSES = 3


def _silent_enough(rec: HostRecord, at: float, t: Timings) -> bool:
    """Always true for a host that went suspect on its own (silent for suspect_after). A
    host suspected on an outside report waits for REPORTED_MISSES missed heartbeats: a live
    host's heartbeat overrules the report first, and a dead one's leases have expired."""
    ref = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
    return at - ref > min(t.suspect_after, REPORTED_MISSES * t.heartbeat_interval) + EPSILON


def _bus_silent(rec: HostRecord, at: float, t: Timings) -> bool:
    ref = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
    return at - ref > t.suspect_after + EPSILON


_NO_FENCE: dict[str, object] = {"fence_attempts": 0, "next_fence_at": None,
                                "fence_deadline": None}


def _node_down(rec: HostRecord, at: float, reason: str, fenced_by: str) -> Step:
    new, effects = _transition(rec, S.down, at, reason, **_NO_FENCE)
    return new, [*effects, Publish("NodeDown", rec.name, reason, fenced_by=fenced_by)]


def _self_fenced(rec: HostRecord, at: float) -> Step:
    age = _age(at, rec.last_storage_heartbeat)
    reason = f"self-fenced: storage leases expired, storage heartbeat {age}"
    return _node_down(rec, at, reason, "storage-lease")


def _request_fence(rec: HostRecord) -> list[Effect]:
    return [RequestFence(rec.name, rec.fence_driver, rec.fence_attempts)]


def _start_fencing(rec: HostRecord, at: float, t: Timings) -> Step:
    if rec.last_storage_heartbeat is None:
        reason = "no storage heartbeat ever seen"
    else:
        age = _age(at, rec.last_storage_heartbeat)
        reason = f"no storage heartbeat since the bus went quiet, last {age}"
    # The manual driver has no timeout: the request only tells operators to act.
    deadline = None if rec.fence_driver == "manual" else at + t.fence_timeout
    new, effects = _transition(rec, S.fencing, at, reason, fence_attempts=1,
                               next_fence_at=None, fence_deadline=deadline)
    return new, [*effects, *_request_fence(new)]


def _fence_failed(rec: HostRecord, at: float, why: str, t: Timings) -> Step:
    n, most = rec.fence_attempts, t.fence_max_attempts
    if n < most:
        retry = at + t.backoff(n)
        text = f"attempt {n}/{most} failed: {why}; retry at {retry:.1f}"
        new = replace(rec, fence_deadline=None, next_fence_at=retry, reason=text)
    else:
        text = (f"attempt {n}/{most} failed: {why}; giving up: confirm the host is off"
                " (confirm_off) or wait for its storage leases to expire")
        new = replace(rec, fence_deadline=None, next_fence_at=None, reason=text)
    return new, [Publish("FenceFailed", rec.name, text, attempt=n)]
