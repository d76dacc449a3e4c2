"""Scenario tests for the pure failure detector, in the style of pve-ha-manager's
regression tests. Every folder in tests/scenarios/ holds:

- `README`: one line saying what the scenario shows.
- `initial`: the cluster and the timings, one directive a line (`#` starts a comment):
    timings production|aggressive     start from a profile (default production)
    set NAME VALUE                    override one Timings field
    tick SECONDS                      simulated tick period (default 0.1)
    duration SECONDS                  how long to simulate
    host NAME [driver=D] [bus=on|off] [storage=on|off] [state=S]
        a host known at time 0 (state default up); bus/storage say whether it sends
        bus heartbeats and writes its storage heartbeat (default on)
- `events`: timed lines `at T WHAT`:
    heartbeat HOST stop|start         bus heartbeats (a new host registers on its first)
    storage HOST stop|start           storage heartbeats
    power HOST off|on                 both at once
    fence HOST ok|fail ["reason"] [attempt=N]   a FenceResult arrives
    operator HOST maintenance|enable|confirm_off|force_down
    cleanup HOST done                 the returning host's cleanup finished
- `log.expect`: the golden log.

The simulated clock runs in whole milliseconds. At each tick time T: the scripted events
at T (in file order), then a bus heartbeat from every sending host if T is a multiple
of the heartbeat interval, then storage heartbeats likewise, then Tick(T). So
`at 3 heartbeat h2 stop` means h2's last heartbeat is the one at 2.

`UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_scenarios.py` rewrites every log.expect;
read the diff before committing it.
"""

from __future__ import annotations

import difflib
import os
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args

import pytest

from services.detector.failure_detector import (
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
    RequestFence,
    StorageHeartbeat,
    Tick,
    Timings,
    step,
)

SCENARIOS = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    pass


@dataclass
class SimHost:
    driver: str = "process"
    bus: bool = True
    storage: bool = True


@dataclass
class Scenario:
    timings: Timings
    tick_ms: int
    duration_ms: int
    hosts: dict[str, SimHost]
    state: DetectorState
    events: dict[int, list[tuple[str, list[str]]]] = field(default_factory=dict)


def _ms(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ScenarioError(f"{where}: expected seconds, got {text!r}") from None
    return round(value * 1000)


def _options(words: list[str], where: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ScenarioError(f"{where}: expected key=value, got {word!r}")
        opts[key] = value
    return opts


def _on_off(value: str, where: str) -> bool:
    if value not in ("on", "off"):
        raise ScenarioError(f"{where}: expected on or off, got {value!r}")
    return value == "on"


def parse_initial(text: str) -> Scenario:
    timings = Timings.production()
    overrides: dict[str, Any] = {}
    tick_ms, duration_ms = 100, 0
    hosts: dict[str, SimHost] = {}
    records: dict[str, HostRecord] = {}
    types = {f.name: f.type for f in fields(Timings)}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"initial line {number}"
        words = shlex.split(line, comments=True)
        if not words:
            continue
        match words:
            case ["timings", "production" | "aggressive" as profile]:
                timings = getattr(Timings, profile)()
            case ["set", name, value] if name in types:
                overrides[name] = int(value) if types[name] == "int" else float(value)
            case ["tick", value]:
                tick_ms = _ms(value, where)
            case ["duration", value]:
                duration_ms = _ms(value, where)
            case ["host", name, *rest]:
                opts = _options(rest, where)
                sim = SimHost(opts.pop("driver", "process"),
                              _on_off(opts.pop("bus", "on"), where),
                              _on_off(opts.pop("storage", "on"), where))
                state = HostState(opts.pop("state", "up"))
                if opts:
                    raise ScenarioError(f"{where}: unknown host options {sorted(opts)}")
                hosts[name] = sim
                records[name] = HostRecord(
                    name=name, state=state, since=0.0, last_heartbeat=0.0,
                    last_storage_heartbeat=0.0 if sim.storage else None,
                    fence_driver=sim.driver, reason="initial")
            case _:
                raise ScenarioError(f"{where}: cannot read {line.strip()!r}")
    if duration_ms <= 0 or tick_ms <= 0:
        raise ScenarioError("initial: duration and tick must be > 0")
    return Scenario(replace(timings, **overrides), tick_ms, duration_ms, hosts,
                    DetectorState(hosts=records))


def parse_events(text: str, scenario: Scenario) -> None:
    commands = get_args(OperatorCommand)
    for number, line in enumerate(text.splitlines(), 1):
        where = f"events line {number}"
        words = shlex.split(line, comments=True)
        if not words:
            continue
        match words:
            case ["at", at, "heartbeat" | "storage" | "power", _, "stop" | "start" | "off"
                  | "on"]:
                pass
            case ["at", at, "fence", _, "ok" | "fail", *_]:
                pass
            case ["at", at, "operator", _, cmd] if cmd in commands:
                pass
            case ["at", at, "cleanup", _, "done"]:
                pass
            case _:
                raise ScenarioError(f"{where}: cannot read {line.strip()!r}")
        ms = _ms(at, where)
        if ms % scenario.tick_ms:
            raise ScenarioError(f"{where}: time {at} is not on the tick grid")
        scenario.events.setdefault(ms, []).append((line.strip(), words[2:]))


def _scripted(words: list[str], at: float, sim: Scenario) -> Event | None:
    """Apply one scripted line: change the simulation, or return an event to feed."""
    what, host, *rest = words
    hosts = sim.hosts
    if what in ("heartbeat", "storage", "power"):
        on = rest[0] in ("start", "on")
        hosts.setdefault(host, SimHost(bus=False, storage=False))
        if what in ("heartbeat", "power"):
            hosts[host].bus = on
        if what in ("storage", "power"):
            hosts[host].storage = on
        return None
    if what == "fence":
        opts = _options([w for w in rest[1:] if "=" in w], "fence")
        reason = " ".join(w for w in rest[1:] if "=" not in w)
        attempt = int(opts["attempt"]) if "attempt" in opts else None
        return FenceResult(host, at, rest[0] == "ok", reason, attempt)
    if what == "operator":
        return Operator(host, at, rest[0])  # type: ignore[arg-type]
    return CleanupDone(host, at)


def _show(effect: Effect) -> str:
    if isinstance(effect, LogLine):
        return effect.text
    if isinstance(effect, RequestFence):
        return f"request fence {effect.host} via {effect.driver} (attempt {effect.attempt})"
    assert isinstance(effect, Publish)
    extra = f" fenced_by={effect.fenced_by}" if effect.fenced_by else ""
    extra += f" attempt={effect.attempt}" if effect.attempt else ""
    return f"publish {effect.kind} {effect.host}{extra} ({effect.reason})"


def run(sim: Scenario) -> list[str]:
    t = sim.timings
    interval_ms = round(t.heartbeat_interval * 1000)
    log = ["timings: " + " ".join(f"{f.name}={getattr(t, f.name):g}" for f in fields(t))]
    state = sim.state

    def feed(event: Event, now: float) -> None:
        nonlocal state
        state, effects = step(state, event, t)
        log.extend(f"{now:7.1f} {_show(e)}" for e in effects)

    for ms in range(0, sim.duration_ms + 1, sim.tick_ms):
        now = ms / 1000
        for line, words in sim.events.get(ms, []):
            log.append(f"{now:7.1f} event: {line.split(maxsplit=2)[2]}")
            event = _scripted(words, now, sim)
            if event is not None:
                feed(event, now)
        if ms % interval_ms == 0:
            for name in sorted(sim.hosts):
                if sim.hosts[name].bus:
                    feed(Heartbeat(name, now, sim.hosts[name].driver), now)
            for name in sorted(sim.hosts):
                if sim.hosts[name].storage:
                    feed(StorageHeartbeat(name, now), now)
        feed(Tick(now), now)
    end = ", ".join(f"{n} {r.state} ({r.reason})" for n, r in sorted(state.hosts.items()))
    log.append(f"{sim.duration_ms / 1000:7.1f} end: {end}")
    return log


def run_folder(folder: Path) -> list[str]:
    sim = parse_initial((folder / "initial").read_text())
    parse_events((folder / "events").read_text(), sim)
    return run(sim)


FOLDERS = sorted(p for p in SCENARIOS.iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_scenario(folder: Path) -> None:
    readme = folder / "README"
    assert readme.is_file() and len(readme.read_text().strip().splitlines()) == 1, (
        f"{folder.name}: README must be one line")
    got = [line.rstrip() for line in run_folder(folder)]
    expect_file = folder / "log.expect"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expect_file.write_text("\n".join(got) + "\n")
    expected = expect_file.read_text().splitlines() if expect_file.exists() else []
    if got != expected:
        diff = "\n".join(difflib.unified_diff(expected, got, "log.expect", "got", lineterm=""))
        pytest.fail(f"{folder.name}: log differs from log.expect "
                    f"(UPDATE_GOLDEN=1 regenerates)\n{diff}")


def test_there_are_scenarios() -> None:
    assert len(FOLDERS) >= 11
