"""Unit tests for the pure failure detector (the scenarios live in tests/scenarios/)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.detector.failure_detector import (
    TRANSITIONS,
    CleanupDone,
    DetectorState,
    Event,
    FenceResult,
    Heartbeat,
    HostRecord,
    HostState,
    InvalidTransition,
    LogLine,
    Operator,
    Publish,
    RequestFence,
    StorageHeartbeat,
    Tick,
    Timings,
    _transition,
    blind,
    step,
)

T = Timings.production()


def one_host(**changes: Any) -> DetectorState:
    rec = HostRecord(name="h1", state=HostState.up, since=0.0, last_heartbeat=0.0,
                     last_storage_heartbeat=0.0)
    return DetectorState(hosts={"h1": replace(rec, **changes)})


# --- Timings --------------------------------------------------------------------------


def test_profiles_are_valid() -> None:
    assert Timings.production() == Timings()
    fast = Timings.aggressive()
    assert (fast.heartbeat_interval, fast.misses_before_suspect) == (0.5, 3)
    assert fast.suspect_grace == 0 and fast.self_fence_grace == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("heartbeat_interval", 0.0), ("misses_before_suspect", 0), ("suspect_grace", -1.0),
     ("fence_timeout", 0.0), ("fence_retry_backoff", 0.0), ("fence_retry_backoff_max", 1.0),
     ("fence_max_attempts", 0), ("storage_timeout", 0.5), ("self_fence_grace", -0.1),
     ("flap_window", 0.0), ("flap_max", 0), ("misses_before_suspect", 2.5),
     ("fence_max_attempts", True), ("fence_timeout", float("nan")), ("flap_window", "600")],
)
def test_bad_timings_name_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Timings\.{name} must be .*got {value!r}"):
        kwargs: dict[str, Any] = {name: value}
        Timings(**kwargs)


def test_backoff_doubles_and_is_capped() -> None:
    t = Timings(fence_retry_backoff=5.0, fence_retry_backoff_max=30.0)
    assert [t.backoff(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert t.backoff(10_000) == 30.0


# --- serialisation --------------------------------------------------------------------


def test_host_record_round_trips_through_json() -> None:
    rec = HostRecord(name="h1", state=HostState.fencing, since=1.5, last_heartbeat=1.0,
                     last_storage_heartbeat=None, fence_attempts=2, next_fence_at=9.0,
                     reason="x", fence_driver="redfish", returns=(3.0, 4.0),
                     fence_deadline=None)
    assert HostRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    state = DetectorState(hosts={"h1": rec})
    assert DetectorState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


@pytest.mark.parametrize(
    ("key", "value"),
    [("state", "gone"), ("since", "soon"), ("fence_attempts", -1), ("returns", [1, "x"]),
     ("name", 3), ("last_heartbeat", True)],
)
def test_bad_host_record_names_the_field(key: str, value: object) -> None:
    data = one_host().hosts["h1"].to_dict() | {key: value}
    with pytest.raises(ValueError, match=rf"HostRecord\.{key} must be"):
        HostRecord.from_dict(data)


def test_old_records_without_newer_fields_load() -> None:
    data = {"name": "h1", "state": "up", "since": 0}
    rec = HostRecord.from_dict(data)
    assert rec.fence_driver == "process" and rec.returns == () and rec.fence_deadline is None


# --- the transition guard -------------------------------------------------------------


def test_every_state_has_a_row_and_targets_are_states() -> None:
    assert set(TRANSITIONS) == set(HostState)
    assert TRANSITIONS[HostState.fencing] == {HostState.down}
    assert TRANSITIONS[HostState.down] == {HostState.returning}


def test_guard_refuses_a_change_outside_the_table() -> None:
    rec = one_host().hosts["h1"]
    with pytest.raises(InvalidTransition, match="up -> down is not allowed"):
        _transition(rec, HostState.down, 1.0, "no proof")


def test_guard_logs_the_change() -> None:
    rec = one_host().hosts["h1"]
    new, effects = _transition(rec, HostState.suspect, 3.1, "3 heartbeats missed")
    assert (new.state, new.since, new.reason) == (HostState.suspect, 3.1, "3 heartbeats missed")
    assert effects == [LogLine("host 'h1': up -> suspect (3 heartbeats missed)")]


# --- step -----------------------------------------------------------------------------


def test_first_heartbeat_registers_the_host() -> None:
    state, effects = step(DetectorState(), Heartbeat("h9", 2.0, "redfish"), T)
    rec = state.hosts["h9"]
    assert (rec.state, rec.last_heartbeat, rec.fence_driver) == (HostState.up, 2.0, "redfish")
    assert effects == [LogLine("host 'h9': registered as up (first heartbeat, fence driver "
                               "redfish)")]


@pytest.mark.parametrize(
    "event",
    [StorageHeartbeat("hx", 1.0), FenceResult("hx", 1.0, True, ""),
     Operator("hx", 1.0, "enable"), CleanupDone("hx", 1.0)],
)
def test_events_for_unknown_hosts_are_ignored_and_logged(event: Event) -> None:
    before = one_host()
    after, effects = step(before, event, T)
    assert after is before
    assert len(effects) == 1 and isinstance(effects[0], LogLine)
    assert effects[0].text.startswith("host 'hx' (unknown): ignored")


def test_step_does_not_touch_its_input() -> None:
    before = one_host()
    snapshot = before.to_dict()
    after, _ = step(before, Tick(10.0), T)
    assert before.to_dict() == snapshot
    assert after.hosts["h1"].state == HostState.suspect


def test_suspect_only_after_more_than_the_misses() -> None:
    state = one_host()
    assert step(state, Tick(3.0), T)[0].hosts["h1"].state == HostState.up
    state, effects = step(state, Tick(3.1), T)
    assert state.hosts["h1"].state == HostState.suspect
    assert Publish("HostSuspect", "h1", "3 heartbeats missed") in effects


def test_a_late_failure_of_an_earlier_attempt_does_not_count() -> None:
    state = one_host(state=HostState.fencing, fence_attempts=2, fence_deadline=40.0)
    after, effects = step(state, FenceResult("h1", 20.0, False, "late", attempt=1), T)
    assert after is state and "no attempt in flight" in str(effects)


def test_a_late_success_still_proves_the_host_off() -> None:
    state = one_host(state=HostState.fencing, fence_attempts=2, next_fence_at=60.0)
    after, effects = step(state, FenceResult("h1", 55.0, True, "", attempt=1), T)
    assert after.hosts["h1"].state == HostState.down
    assert Publish("NodeDown", "h1", "fenced by process", fenced_by="process") in effects


def test_a_heartbeat_sent_before_the_host_went_down_is_not_a_return() -> None:
    state = one_host(state=HostState.down, since=20.0)
    after, effects = step(state, Heartbeat("h1", 19.5), T)
    assert after is state and "sent before it went down" in str(effects)


def test_a_heartbeat_read_after_the_host_went_down_but_sent_before_is_not_a_return() -> None:
    # Re-read after a rebalance or delivered twice: read at 25, sent at 19.5 by the host.
    state = one_host(state=HostState.down, since=20.0)
    after, effects = step(state, Heartbeat("h1", 25.0, sent=19.5), T)
    assert after is state and "sent before it went down" in str(effects)
    back, effects = step(state, Heartbeat("h1", 25.0, sent=24.9), T)
    assert back.hosts["h1"].state == HostState.returning
    assert any(isinstance(e, Publish) and e.kind == "NodeUp" for e in effects)


def test_manual_fencing_has_no_timeout() -> None:
    state = one_host(state=HostState.suspect, since=3.1, fence_driver="manual",
                     last_storage_heartbeat=None)
    state, effects = step(state, Tick(5.1), T)
    assert RequestFence("h1", "manual", 1) in effects
    state, effects = step(state, Tick(5000.0), T)
    assert state.hosts["h1"].state == HostState.fencing
    assert not [e for e in effects if isinstance(e, Publish | RequestFence)]


def test_hosts_are_judged_in_name_order() -> None:
    recs = {n: HostRecord(name=n, state=HostState.up, since=0.0, last_heartbeat=0.0)
            for n in ("b", "c", "a")}
    recs["d"] = HostRecord(name="d", state=HostState.up, since=0.0, last_heartbeat=4.0)  # heard: not blind
    _, effects = step(DetectorState(hosts=recs), Tick(4.0), T)
    assert [e.host for e in effects if isinstance(e, Publish)] == ["a", "b", "c"]


# --- a blind detector judges nobody ---------------------------------------------------


def test_all_hosts_silent_at_once_is_a_blind_detector_not_a_mass_failure() -> None:
    recs = {n: HostRecord(name=n, state=HostState.up, since=0.0, last_heartbeat=0.0) for n in ("a", "b", "c")}
    state = DetectorState(hosts=recs)
    assert blind(state, 4.0, T) is not None and "3 watched hosts" in str(blind(state, 4.0, T))
    for at in (4.0, 20.0, 500.0):
        new, effects = step(state, Tick(at), T)
        assert new.hosts == state.hosts and not effects
    # One host is heard again: the others are judged on their own silence.
    state, _ = step(state, Heartbeat("a", 500.0), T)
    assert blind(state, 500.5, T) is None
    state, effects = step(state, Tick(500.5), T)
    assert {e.host for e in effects if isinstance(e, Publish) and e.kind == "HostSuspect"} == {"b", "c"}


def test_hosts_falling_silent_one_by_one_within_an_interval_are_not_suspected() -> None:
    # The bus stops at 10.0: each host's last heartbeat is wherever its phase was.
    i = T.heartbeat_interval
    last = {"a": 10.0 - 0.9 * i, "b": 10.0 - 0.5 * i, "c": 10.0 - 0.1 * i}
    state = DetectorState(hosts={n: HostRecord(name=n, state=HostState.up, since=0.0, last_heartbeat=ref)
                                 for n, ref in last.items()})
    at = last["a"] + T.suspect_after + 0.01  # a is past its deadline, b and c are not yet
    assert blind(state, at, T) is None
    new, effects = step(state, Tick(at), T)
    assert not effects and new.hosts == state.hosts
    # Whereas a host silent while another is heard well after it is suspected at once.
    state, _ = step(state, Heartbeat("c", at), T)
    _, effects = step(state, Tick(at), T)
    assert [e.host for e in effects if isinstance(e, Publish) and e.kind == "HostSuspect"] == ["a"]


def test_blind_detector_still_finishes_a_fence_and_a_single_host_is_judged() -> None:
    fencing = HostRecord(name="a", state=HostState.fencing, since=0.0, last_heartbeat=0.0, fence_attempts=1,
                         fence_deadline=5.0)
    up = HostRecord(name="b", state=HostState.up, since=0.0, last_heartbeat=0.0)
    state = DetectorState(hosts={"a": fencing, "b": up})
    assert blind(state, 10.0, T) is not None
    new, effects = step(state, Tick(10.0), T)
    assert any(isinstance(e, Publish) and e.kind == "FenceFailed" and e.host == "a" for e in effects)
    assert new.hosts["b"].state == HostState.up
    # Only one watched host: its silence is its own.
    alone = DetectorState(hosts={"b": up})
    assert blind(alone, 10.0, T) is None
    new, _ = step(alone, Tick(10.0), T)
    assert new.hosts["b"].state != HostState.up


# --- safety property: never NodeDown without proof -------------------------------------

HOSTS = ("h1", "h2")
FAST = Timings(heartbeat_interval=1.0, suspect_grace=1.0, fence_timeout=5.0,
               fence_retry_backoff=1.0, fence_retry_backoff_max=4.0, fence_max_attempts=3,
               storage_timeout=3.0, self_fence_grace=1.0, flap_window=30.0, flap_max=1)

event_kinds = st.sampled_from(
    ["heartbeat", "storage", "tick", "fence_ok", "fence_fail", "maintenance", "enable",
     "confirm_off", "force_down", "cleanup"])


def make_event(kind: str, host: str, at: float) -> Event:
    if kind == "heartbeat":
        return Heartbeat(host, at)
    if kind == "storage":
        return StorageHeartbeat(host, at)
    if kind == "tick":
        return Tick(at)
    if kind in ("fence_ok", "fence_fail"):
        return FenceResult(host, at, kind == "fence_ok", "sim")
    if kind == "cleanup":
        return CleanupDone(host, at)
    return Operator(host, at, kind)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(event_kinds, st.sampled_from(HOSTS),
                          st.floats(min_value=0.0, max_value=3.0)), max_size=80))
def test_node_down_only_with_proof(script: list[tuple[str, str, float]]) -> None:
    state, now = DetectorState(), 0.0
    for host in HOSTS:
        state, _ = step(state, Heartbeat(host, now), FAST)
    for kind, host, gap in script:
        now += gap
        event = make_event(kind, host, now)
        before = state
        state, effects = step(state, event, FAST)
        for effect in effects:
            if not (isinstance(effect, Publish) and effect.kind == "NodeDown"):
                continue
            rec = before.hosts[effect.host]
            if effect.fenced_by == "storage-lease":
                last = rec.last_storage_heartbeat
                assert last is not None and now - last >= FAST.lease_expiry - 1e-6
            elif effect.fenced_by == "earlier-fence":
                assert rec.state == HostState.returning
            elif effect.fenced_by in ("manual", "operator"):
                assert isinstance(event, Operator)
            else:
                assert isinstance(event, FenceResult) and event.ok
                assert rec.state == HostState.fencing
        for rec in state.hosts.values():
            assert rec.state in HostState
            assert all(f.name in rec.to_dict() for f in fields(rec))
