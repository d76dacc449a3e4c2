"""The chaos campaign's network-cut scenario (issue 10): one host, run in a network
namespace of its own (services/evacctl/netns.py), is cut off the broker while its storage
heartbeat goes on. Its isolation response is drawn by the run's seed:

- ``power-off`` (about 2 runs in 3, isolation timeout 2-4 s): its executor destroys its
  HA domains and stops its storage heartbeat; the detector counts it self-fenced and its
  VMs are evacuated exactly once. Its bus reports are stale while it is cut, so its truth
  is read from its own log: every shared VM running there was destroyed before it was
  first seen running elsewhere. Then the network comes back and the host is judged as a
  returned one: no stale copy may start there.
- ``none`` (isolation timeout 60 s): the host must become ``isolated`` and never be
  evacuated; its last report stays in the checker's view (its VMs do run there), so a
  copy started elsewhere is a double run. Once back it must be ``up`` with its VMs still
  running.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from services.common.schemas import PowerState, Topic
from services.detector.storage import heartbeat_dir, read_heartbeat
from services.evacctl.invariants import InvariantChecker
from services.evacctl.netns import NetNs, claim_subnet, netns_unavailable, release_subnet, spawn_in_netns
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import plan_vms
from services.evacctl.stack import Stack

if TYPE_CHECKING:
    from services.evacctl.chaos import Recorder, RunResult

BASE = "10.252"  # the test module's namespaces use 10.251.0.0/16


def destroyed_by_isolation(log: Path) -> dict[str, float]:
    """uuid → when the executor's isolation response destroyed it (from its JSON log)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            msg = str(rec.get("message", ""))
            if msg.startswith("isolation: destroyed "):
                out[msg.split()[2]] = datetime.fromisoformat(rec["time"]).timestamp()
    return out


def host_events(rec: Recorder, kind: str, host: str) -> list[dict[str, Any]]:
    """The events of one type about one host seen on evacuate.host-events."""
    out = []
    for topic, _, value in list(rec.seen):
        if topic != str(Topic.HOST_EVENTS):
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            msg = json.loads(value)
            if msg["type"] == kind and msg["data"]["host"] == host:
                out.append(msg["data"])
    return out


@dataclass
class NetCut:
    response: str  # the victim's isolation response: power-off or none
    isolation_timeout: float
    subnet: int | None = None  # the claimed 10.252.X.0/24
    ns: NetNs | None = None
    victim: str = ""
    cut_at: float = 0.0
    first_elsewhere: dict[str, float] = field(default_factory=dict)  # uuid → first report of it running elsewhere
    sampler: asyncio.Task[None] | None = None

    @classmethod
    def draw(cls, rng: random.Random, response: str | None = None) -> NetCut | str:
        """The scenario's schedule, or why it cannot run here."""
        drawn = "power-off" if rng.random() < 2 / 3 else "none"
        timeout = rng.uniform(2.0, 4.0)  # drawn either way: a forced response replays the rest
        why = netns_unavailable()
        if why:
            return why
        response = response or drawn
        return cls(response, round(timeout, 1) if response == "power-off" else 60.0)

    @property
    def broker_ip(self) -> str:
        return f"{BASE}.{self.subnet}.1"

    def claim(self) -> str:
        """Claim a /24 for this run (its broker address is added to lo); returns that address."""
        self.subnet = claim_subnet(os.getpid() % 256, BASE)
        if self.subnet is None:
            raise RuntimeError(f"network-cut: every /24 of {BASE}.0.0/16 is taken on lo")
        return self.broker_ip

    def spawn(self, stack: Stack, index: int, host: str, vm_count: int, memory_mib: int) -> None:
        """The victim host: like ``stack.add_host``, its executor in a namespace of its own."""
        self.victim = host
        self.ns = NetNs(host, f"{BASE}.{self.subnet}.5", f"{BASE}.{self.subnet}.6", prefix=f"ec{os.getpid():x}")
        self.ns.create()
        spawn_in_netns(stack, self.ns, host, plan_vms(index, host, vm_count, shutoff=1, local=1),
                       memory_mib=memory_mib, EVACUATE_ISOLATION_RESPONSE=self.response,
                       EVACUATE_ISOLATION_TIMEOUT=str(self.isolation_timeout),
                       EVACUATE_LOG_LEVEL="INFO")  # its log is the evidence of the isolation response

    def victims(self) -> list[str]:
        """The hosts whose VMs are to be evacuated: none when the response is none."""
        return [self.victim] if self.response == "power-off" else []

    def cut(self, stack: Stack, view: ClusterView, checker: InvariantChecker, res: RunResult) -> float:
        assert self.ns is not None
        if self.response == "power-off":
            checker.dead.add(self.victim)  # its reports are stale from now on
            self.sampler = asyncio.ensure_future(self._sample(stack, view))
        self.cut_at = self.ns.cut()
        return self.cut_at

    async def _sample(self, stack: Stack, view: ClusterView) -> None:
        shared = [vm for vm in stack.vms[self.victim] if vm.shared]
        while True:
            for vm in shared:
                for h, d in view.where(vm.uuid, {self.victim}):
                    if d.power_state == PowerState.RUNNING:  # sent by h no later than report_at
                        self.first_elsewhere.setdefault(vm.uuid, view.report_at.get(h, time.time()))
            await asyncio.sleep(0.05)

    async def run(self, stack: Stack, view: ClusterView, conn: asyncpg.Pool, rec: Recorder,
                  checker: InvariantChecker, res: RunResult) -> None:
        """The fault task while the main loop samples."""
        if self.response == "power-off":
            res.faults.append(f"cut {self.victim} (response power-off after {self.isolation_timeout:.1f}s),"
                              " network back after the evacuation")
            if await self._wait(checker, view, lambda: self._state(conn, "down"), 60):
                return
            checker.violations.add(f"{self.victim} cut with response power-off was not down within 60 s")
            return
        res.faults.append(f"cut {self.victim} (response none): isolated, not evacuated")
        await self._stay_isolated(stack, view, conn, rec, checker)
        self.restore_network()
        back = time.time()
        if not await self._wait(checker, view, lambda: self._state(conn, "up"), 60):
            checker.violations.add(f"{self.victim} not up within 60 s after its network came back")
        if not await self._wait(checker, view, lambda: view.report_at.get(self.victim, 0) > back, 30):
            checker.violations.add(f"no fresh report of {self.victim} within 30 s after its network came back")
            return
        running = {d.uuid for d in view.reports[self.victim].domains if d.power_state == PowerState.RUNNING}
        want = {vm.uuid for vm in stack.vms[self.victim] if vm.running}
        if running != want:
            checker.violations.add(f"{self.victim} (response none) runs {len(running & want)} of its"
                                   f" {len(want)} VMs after the cut")

    async def _stay_isolated(self, stack: Stack, view: ClusterView, conn: asyncpg.Pool, rec: Recorder,
                             checker: InvariantChecker) -> None:
        v = self.victim
        if not await self._wait(checker, view, lambda: self._state(conn, "isolated"), 30):
            checker.violations.add(f"{v} cut with response none was not isolated within 30 s")
            return
        if not await self._wait(checker, view, lambda: host_events(rec, "HostIsolated", v), 10):
            checker.violations.add(f"no HostIsolated {v} on the bus")
        before = read_heartbeat(heartbeat_dir(stack.shared_dir) / v)
        await self._wait(checker, view, lambda: False, 8.0)  # well past the storage lease expiry
        after = read_heartbeat(heartbeat_dir(stack.shared_dir) / v)
        if before is None or after is None or after[2] <= before[2] or after[1] <= self.cut_at:
            checker.violations.add(f"{v}'s storage heartbeat was not renewed while cut: {before} then {after}")
        state = await conn.fetchval("SELECT state FROM hosts WHERE name=$1", v)
        if state != "isolated":
            checker.violations.add(f"{v} (response none, storage heartbeat renewed) went {state} while cut")
        if await conn.fetchval("SELECT count(*) FROM evacuations WHERE source=$1", v):
            checker.violations.add(f"{v} was evacuated while isolated with its storage heartbeat renewed")
        if host_events(rec, "NodeDown", v):
            checker.violations.add(f"NodeDown {v} published while it was isolated, storage heartbeat renewed")
        if stack.procs[f"executor-{v}"].poll() is not None:
            checker.violations.add(f"isolated host {v} was fenced")

    async def finish(self, stack: Stack, view: ClusterView, conn: asyncpg.Pool, rec: Recorder,
                     checker: InvariantChecker) -> None:
        """power-off, after its VMs were evacuated: judge the isolation response from the
        victim's own log, bring its network back and judge it as a returned host."""
        if self.response != "power-off":
            return
        v = self.victim
        self.stop_sampler()
        destroyed = destroyed_by_isolation(stack.workdir / "logs" / f"executor-{v}.log")
        want = {vm.uuid for vm in stack.vms[v] if vm.shared and vm.running}
        if set(destroyed) != want:
            checker.violations.add(f"{v}'s isolation response destroyed {len(set(destroyed) & want)} of its"
                                   f" {len(want)} running HA VMs (and {len(set(destroyed) - want)} others)")
        for u, t in sorted(self.first_elsewhere.items()):
            if u not in destroyed or destroyed[u] >= t:
                name = checker.vms[u].name if u in checker.vms else u
                checker.violations.add(f"{name} ran elsewhere at {t:.3f} before cut {v} destroyed it"
                                       f" ({destroyed.get(u, 'never')}): run twice")
        down = host_events(rec, "NodeDown", v)
        if len(down) != 1 or down[0].get("fenced_by") != "storage-lease":
            checker.violations.add(f"cut {v} (power-off): expected one NodeDown fenced_by storage-lease, got {down}")
        if not host_events(rec, "HostIsolated", v):
            checker.violations.add(f"cut {v} (power-off) was never isolated first")
        if stack.procs[f"executor-{v}"].poll() is not None:
            checker.violations.add(f"self-fenced host {v} was fenced too")
        # Back on the network: a returned host. Its reports buffered while cut arrive late,
        # so it stays out of the sampled view until one sent after the return is in.
        self.restore_network()
        back = time.time()
        view.reports.pop(v, None)
        checker.returned.add(v)
        if not await self._wait(checker, view, lambda: view.report_at.get(v, 0) > back, 30):
            checker.violations.add(f"no fresh report of {v} within 30 s after its network came back")
        checker.dead.discard(v)
        if not await self._wait(checker, view, lambda: self._state(conn, "up"), 60):
            checker.violations.add(f"{v} not up within 60 s after its network came back")
        shared = {vm.uuid for vm in stack.vms[v] if vm.shared}
        # Its CleanupOrder undefines the stale copies; checker.final judges what is left.
        await self._wait(checker, view, lambda: v in view.reports and not any(
            d.uuid in shared for d in view.reports[v].domains), 10)

    async def _state(self, conn: asyncpg.Pool, state: str) -> bool:
        return await conn.fetchval("SELECT state FROM hosts WHERE name=$1", self.victim) == state

    @staticmethod
    async def _wait(checker: InvariantChecker, view: ClusterView, cond: Callable[[], Any], timeout: float) -> bool:
        """Sample the invariants until ``cond`` holds; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            checker.sample(view)
            result = cond()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return True
            await asyncio.sleep(0.1)
        return False

    def restore_network(self) -> None:
        if self.ns is not None:
            self.ns.restore()

    def stop_sampler(self) -> None:
        if self.sampler is not None:
            self.sampler.cancel()
            self.sampler = None

    def cleanup(self) -> None:
        """Namespace, veths and the lo address: also after a failure."""
        self.stop_sampler()
        if self.ns is not None:
            self.ns.delete()
        if self.subnet is not None:
            release_subnet(self.subnet, BASE)
            self.subnet = None
