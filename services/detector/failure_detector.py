"""The pure failure detector: `step(state, event, timings) -> (state, effects)`.

No I/O, no clock (the rules its events share are in `fd_rules.py`): the shell feeds
events carrying their time and carries out the
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

from services.detector.fd_rules import (  # noqa: F401 - re-exported: the core's public names
    REPORTED_MISSES,
    TRANSITIONS,
    HostEvent,
    InvalidTransition,
    S,
    Step,
    _age,
    _bus_silent,
    _elapsed,
    _fence_failed,
    _ignored,
    _leases_expired,
    _node_down,
    _request_fence,
    _self_fenced,
    _silent_enough,
    _start_fencing,
    _storage_alive,
    _transition,
    _with,
)

# A Tick re-judges a host until it settles (up → suspect → fencing can happen in one
# tick with the aggressive profile); no legal path is longer than this.
_MAX_CHAIN = 8


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
