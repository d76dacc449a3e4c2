"""The pure failure detector: `step(state, event, timings) -> (state, effects)`.

No I/O, no clock: the shell feeds events carrying their time and carries out the
effects (publish, fence, log). Every state change goes through `_transition`, which
refuses a change that is not in `TRANSITIONS` (a bug, so it raises) and logs
`host 'h1': up -> suspect (3 heartbeats missed)`.

An event that does not apply to a host's state (an operator command that makes no sense
there, a fence result nobody waits for, a cleanup for a host that is not returning) is
ignored and logged, never raised: it comes from outside and may simply be late.

Decisions worth knowing:
- Suspect is judged after `suspect_grace`, not at once, so a blip costs nothing. The
  judgement: storage heartbeat renewed after the bus went quiet and fresh → isolated;
  storage leases expired → down (self-fenced); otherwise → fencing.
- Storage heartbeats must be fed when the shell sees the host's heartbeat file change
  (at = when seen), not on every poll: an unchanged file is no sign of life.
- A host in `fencing` stays there when heartbeats resume: a fence may be in flight, and
  only its result (or an operator, or expired storage leases) ends the round.
- A returning host that loses its heartbeats again goes straight back to `down` and
  NodeDown is published again: it was proven down before, has started nothing since
  (returning executors never start guests) and is never a placement target, so there is
  nothing to fence and nothing to evacuate.
- Flap damping: a host that returned more than `flap_max` times within `flap_window`
  goes from `returning` to `maintenance` (quarantine) when its cleanup is done, instead
  of `up`; `enable` clears its return history.
"""

from __future__ import annotations

from dataclasses import replace

from services.common.errors import EvacuateError
from services.detector.fd_model import (
    EPSILON,
    CleanupDone,
    DetectorState,
    Effect,
    Event,
    FenceResult,
    Heartbeat,
    HostRecord,
    HostState,
    LogLine,
    Operator,
    OperatorCommand,
    Publish,
    PublishKind,
    RequestFence,
    StorageHeartbeat,
    Tick,
    Timings,
)

__all__ = [
    "CleanupDone", "DetectorState", "Effect", "Event", "FenceResult", "Heartbeat",
    "HostRecord", "HostState", "InvalidTransition", "LogLine", "Operator",
    "HostEvent", "OperatorCommand", "Publish", "PublishKind", "RequestFence", "StorageHeartbeat",
    "TRANSITIONS", "Tick", "Timings", "blind", "step", "step_host",
]

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

# A Tick re-judges a host until it settles (up → suspect → fencing can happen in one
# tick with the aggressive profile); no legal path is longer than this.
_MAX_CHAIN = 8


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


# --- ticks ----------------------------------------------------------------------------


def _judge(rec: HostRecord, at: float, t: Timings) -> Step:
    """One change a Tick at `at` makes to `rec`, or none (same record, no effects)."""
    if rec.state == S.up and _bus_silent(rec, at, t):
        ref = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
        reason = f"{int((at - ref) / t.heartbeat_interval + EPSILON)} heartbeats missed"
        new, effects = _transition(rec, S.suspect, at, reason)
        return new, [*effects, Publish("HostSuspect", rec.name, reason)]
    if (rec.state == S.suspect and _elapsed(at, rec.since, t.suspect_grace)
            and _silent_enough(rec, at, t)):
        if _storage_alive(rec, at, t):
            reason = (f"bus heartbeats lost but storage heartbeat "
                      f"{_age(at, rec.last_storage_heartbeat)}")
            new, effects = _transition(rec, S.isolated, at, reason)
            return new, [*effects, Publish("HostIsolated", rec.name, reason)]
        if _leases_expired(rec, at, t):
            return _self_fenced(rec, at)
        return _start_fencing(rec, at, t)
    if rec.state in (S.isolated, S.fencing) and _leases_expired(rec, at, t):
        return _self_fenced(rec, at)
    if rec.state == S.fencing:
        if rec.fence_deadline is not None and _elapsed(at, rec.fence_deadline, 0.0):
            return _fence_failed(rec, at, f"no result within {t.fence_timeout:g} s", t)
        if rec.next_fence_at is not None and _elapsed(at, rec.next_fence_at, 0.0):
            new = replace(rec, fence_attempts=rec.fence_attempts + 1, next_fence_at=None,
                          fence_deadline=at + t.fence_timeout)
            return new, _request_fence(new)
    if rec.state == S.returning and _bus_silent(rec, at, t):
        reason = "heartbeats lost again before cleanup; proven down before, nothing to evacuate"
        return _node_down(rec, at, reason, "earlier-fence")
    return rec, []


# An up host is suspected only if another host was heard this many heartbeat intervals
# after its own last heartbeat (see _tick).
HEARD_AFTER = 1.5


def blind(state: DetectorState, at: float, t: Timings) -> str | None:
    """Why this detector cannot judge anyone now, or None. When two or more watched hosts
    are all silent on the bus at once, the likeliest fault is between the hosts and this
    detector (the broker restarting, this detector cut off), not every host dying
    together: like Kubernetes' full-disruption mode, nobody is suspected or fenced until
    some host is heard again. A real whole-cluster outage loses nothing by the wait: there
    is no host left to evacuate to. Hosts already fencing or isolated go on (a requested
    fence finishes; expired storage leases are proof without the bus)."""
    watched = 0
    newest = None
    for rec in state.hosts.values():
        if rec.state in (S.down, S.maintenance):
            continue
        watched += 1
        ref = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
        newest = ref if newest is None or ref > newest else newest
    if watched < 2 or newest is None or at - newest <= t.suspect_after + EPSILON:
        return None
    return (f"no heartbeat from any of {watched} watched hosts for {at - newest:.1f} s: the bus or this detector"
            " is cut off; no host is suspected or fenced until one is heard again")


def _tick(state: DetectorState, at: float, t: Timings) -> tuple[DetectorState, list[Effect]]:
    # Only the hosts a tick may change are judged, in name order (the order of the
    # effects); the hosts dict is copied only when one of them really changed. An up host
    # changes only once its bus is silent (`_bus_silent`, inlined: this loop runs over
    # every host every tick); down and maintenance hosts never change on a tick.
    limit = t.suspect_after + EPSILON
    candidates = []
    silent_up: list[tuple[str, float]] = []
    frozen_ok = []  # the only hosts a blind detector judges (see `blind`)
    watched = 0
    newest = float("-inf")
    for name, rec in state.hosts.items():
        st = rec.state
        if st == S.down or st == S.maintenance:
            continue
        watched += 1
        ref = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
        if ref > newest:
            newest = ref
        if st == S.up:
            if at - ref > limit:
                silent_up.append((name, ref))
        else:
            candidates.append(name)
            if st == S.fencing or st == S.isolated:
                frozen_ok.append(name)
    if watched >= 2 and at - newest > limit:
        candidates = frozen_ok
    else:
        # An up host's silence counts only if some host was heard clearly after it went
        # quiet: hosts that all stopped within one interval of each other stopped because
        # of the bus (they fall silent one by one as their phases pass, before `blind`
        # can see that all of them are).
        margin = HEARD_AFTER * t.heartbeat_interval
        candidates.extend(name for name, ref in silent_up if watched < 2 or newest - ref > margin)
    candidates.sort()
    changed: dict[str, HostRecord] = {}
    effects: list[Effect] = []
    for name in candidates:
        rec = first = state.hosts[name]
        for _ in range(_MAX_CHAIN):
            new, step_effects = _judge(rec, at, t)
            if not step_effects and (new is rec or new == rec):
                break
            rec = new
            effects.extend(step_effects)
        if rec is not first:
            changed[name] = rec
    if not changed:
        return state, effects
    return DetectorState(hosts={**state.hosts, **changed}), effects


# --- other events ---------------------------------------------------------------------


def _heartbeat(rec: HostRecord | None, ev: Heartbeat, t: Timings) -> Step:
    if rec is None:
        new = HostRecord(name=ev.host, state=S.up, since=ev.at, last_heartbeat=ev.at,
                         reason="first heartbeat", fence_driver=ev.fence_driver)
        return new, [LogLine(f"host {ev.host!r}: registered as up "
                             f"(first heartbeat, fence driver {ev.fence_driver})")]
    if rec.state == S.down and (ev.at if ev.sent is None else ev.sent) <= rec.since + EPSILON:
        return rec, _ignored(rec, ev.host, "a heartbeat", "sent before it went down")
    previous = rec.last_heartbeat if rec.last_heartbeat is not None else rec.since
    last = max(previous, ev.at)
    if rec.state == S.fencing:
        # The fence round keeps its driver: the request in flight names it.
        return _with(rec, last_heartbeat=last), []
    rec = _with(rec, last_heartbeat=last, fence_driver=ev.fence_driver)
    if rec.state == S.suspect:
        return _transition(rec, S.up, ev.at,
                           f"heartbeat resumed after {ev.at - previous:.1f} s of silence")
    if rec.state == S.isolated:
        return _transition(rec, S.up, ev.at, "bus heartbeat resumed; nothing was evacuated")
    if rec.state == S.down:
        returns = (*(r for r in rec.returns if not _elapsed(ev.at, r, t.flap_window)), ev.at)
        reason = (f"heartbeat after being down; stale copies to clean up first;"
                  f" return {len(returns)} within {t.flap_window:g} s")
        if len(returns) > t.flap_max:
            reason += f", more than flap_max {t.flap_max}: quarantine after cleanup"
        new, effects = _transition(rec, S.returning, ev.at, reason, returns=returns)
        return new, [*effects, Publish("NodeUp", rec.name, reason)]
    return rec, []


def _storage_heartbeat(rec: HostRecord | None, ev: StorageHeartbeat) -> Step | None:
    if rec is None:
        return None
    last = rec.last_storage_heartbeat
    return _with(rec, last_storage_heartbeat=ev.at if last is None else max(last, ev.at)), []


def _fence_result(rec: HostRecord, ev: FenceResult, t: Timings) -> Step:
    if rec.state != S.fencing:
        what = "fence success" if ev.ok else f"fence failure {ev.reason!r}"
        return rec, _ignored(rec, ev.host, what, "no fence pending")
    if ev.ok:
        # Proof is proof, even from an attempt that already timed out.
        return _node_down(rec, ev.at, f"fenced by {rec.fence_driver}", rec.fence_driver)
    stale = ev.attempt is not None and ev.attempt != rec.fence_attempts
    if rec.fence_deadline is None or stale:
        return rec, _ignored(rec, ev.host, f"fence failure {ev.reason!r}", "no attempt in flight")
    return _fence_failed(rec, ev.at, ev.reason, t)


def _operator(rec: HostRecord, ev: Operator, t: Timings) -> Step:
    cmd, at = ev.command, ev.at
    if cmd in ("confirm_off", "force_down") and not _bus_silent(rec, at, t):
        # An operator's word cannot outweigh a heartbeat we just received.
        age = _age(at, rec.last_heartbeat).replace(" old", " ago")
        return rec, _ignored(rec, ev.host, f"operator {cmd}", f"last heartbeat {age}")
    if cmd == "suspect":
        if rec.state != S.up:
            return rec, _ignored(rec, ev.host, "a report that it stopped", f"already {rec.state}")
        new, effects = _transition(rec, S.suspect, at, "reported stopped by an outside monitor;"
                                   f" judged after {REPORTED_MISSES} missed heartbeats")
        return new, [*effects, Publish("HostSuspect", rec.name, new.reason)]
    if cmd == "maintenance" and rec.state in (S.up, S.suspect, S.isolated):
        return _transition(rec, S.maintenance, at, "disabled by operator")
    if cmd == "enable" and rec.state == S.maintenance:
        return _transition(rec, S.up, at, "enabled by operator", returns=())
    if cmd == "confirm_off" and rec.state in (S.suspect, S.isolated, S.fencing):
        return _node_down(rec, at, "operator confirmed the host is off", "manual")
    if cmd == "force_down" and rec.state == S.isolated:
        return _node_down(rec, at, "forced down by operator while isolated", "operator")
    return rec, _ignored(rec, ev.host, f"operator {cmd}")


def _cleanup_done(rec: HostRecord, ev: CleanupDone, t: Timings) -> Step:
    if rec.state != S.returning:
        return rec, _ignored(rec, ev.host, "cleanup done")
    if len(rec.returns) > t.flap_max:
        reason = (f"quarantined: flapping, {len(rec.returns)} returns within"
                  f" {t.flap_window:g} s; operator must enable")
        return _transition(rec, S.maintenance, ev.at, reason)
    return _transition(rec, S.up, ev.at, "stale copies cleaned up")


def step_host(
    rec: HostRecord | None, event: HostEvent, timings: Timings
) -> tuple[HostRecord | None, list[Effect]]:
    """`step` for an event about one host (anything but a Tick), given only that host's
    record (None: unknown host). Returns its new record (None while still unknown) and
    the effects. O(1) however many hosts there are: a shell that keeps the records in
    its own dict replaces one entry instead of copying the whole state per heartbeat."""
    result: Step | None
    if isinstance(event, Heartbeat):
        result = _heartbeat(rec, event, timings)
    elif isinstance(event, StorageHeartbeat):
        result = _storage_heartbeat(rec, event)
    elif rec is None:
        result = None
    elif isinstance(event, FenceResult):
        result = _fence_result(rec, event, timings)
    elif isinstance(event, Operator):
        result = _operator(rec, event, timings)
    else:
        result = _cleanup_done(rec, event, timings)
    if result is None:
        return rec, _ignored(None, event.host, type(event).__name__)
    return result


def step(
    state: DetectorState, event: Event, timings: Timings
) -> tuple[DetectorState, list[Effect]]:
    """Apply one event. Returns the new state and the effects to carry out, in order."""
    if isinstance(event, Tick):
        return _tick(state, event.at, timings)
    rec = state.hosts.get(event.host)
    new, effects = step_host(rec, event, timings)
    if new is None or new == rec:
        return state, effects
    return state.with_host(new), effects
