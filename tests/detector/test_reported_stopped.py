"""The `suspect` operator command (a Masakari COMPUTE_HOST STOPPED notification): it
makes an up host suspect at once; it is judged after three missed heartbeats (not
misses_before_suspect), when its storage leases have expired, and only a fence or
expired leases end in NodeDown."""

from __future__ import annotations

from dataclasses import replace

from services.detector.failure_detector import (
    DetectorState,
    Effect,
    Heartbeat,
    HostState,
    Operator,
    Publish,
    RequestFence,
    Tick,
    Timings,
    step,
)

# The aggressive profile (0.5 s heartbeats, no suspect grace) with a cautious 10 misses:
# on its own the detector suspects a silent host after 5 s.
T = replace(Timings.aggressive(), misses_before_suspect=10)


def run(state: DetectorState, *events: object) -> tuple[DetectorState, list[Effect]]:
    effects: list[Effect] = []
    for ev in events:
        state, out = step(state, ev, T)  # type: ignore[arg-type]
        effects.extend(out)
    return state, effects


def started() -> DetectorState:
    state, _ = run(DetectorState(), Heartbeat("h1", 0.0), Heartbeat("h1", 0.5), Heartbeat("h1", 1.0))
    return state


def test_a_report_makes_an_up_host_suspect_but_fences_only_after_three_missed_heartbeats() -> None:
    state, effects = run(started(), Operator("h1", 1.1, "suspect"), Tick(1.2), Tick(1.6), Tick(2.4))
    assert state.hosts["h1"].state is HostState.suspect
    assert [e.kind for e in effects if isinstance(e, Publish)] == ["HostSuspect"]
    assert not [e for e in effects if isinstance(e, RequestFence)], "fenced before its leases could expire"
    state, effects = run(state, Tick(2.6))  # 1.6 s of silence: 3 heartbeats missed, not the 10 of its own
    assert state.hosts["h1"].state is HostState.fencing
    assert [e for e in effects if isinstance(e, RequestFence)] == [RequestFence("h1", "process", 1)]
    assert not [e for e in effects if isinstance(e, Publish) and e.kind == "NodeDown"]


def test_a_live_hosts_heartbeat_overrules_the_report() -> None:
    state, effects = run(started(), Operator("h1", 1.1, "suspect"), Tick(1.2), Heartbeat("h1", 1.5), Tick(3.0))
    assert state.hosts["h1"].state is HostState.up
    assert not [e for e in effects if isinstance(e, RequestFence)]


def test_a_report_about_a_host_that_is_not_up_is_ignored() -> None:
    state, _ = run(started(), Operator("h1", 1.1, "maintenance"))
    after, effects = run(state, Operator("h1", 1.2, "suspect"))
    assert after.hosts["h1"].state is HostState.maintenance
    assert any("ignored a report that it stopped: already maintenance" in str(e) for e in effects)
    unknown, effects = run(DetectorState(), Operator("ghost", 1.0, "suspect"))
    assert unknown.hosts == {} and any("ignored" in str(e) for e in effects)
