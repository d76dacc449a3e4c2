"""The safety invariants of DESIGN §4, checked over a run: sampled while it runs from
the executors' own InstanceReports (what libvirt really has), and at the end against
PostgreSQL. Used by the chaos campaign (bench/chaos.py) and its CI test."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from services.common.schemas import PowerState
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import SimVM


@dataclass
class Violations:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass
class InvariantChecker:
    """``dead`` are hosts whose VMs died with them (their last report is void);
    ``returned`` are hosts brought back after their VMs were evacuated."""

    vms: dict[str, SimVM]  # by uuid: the VMs as they were at the start
    dead: set[str] = field(default_factory=set)
    returned: set[str] = field(default_factory=set)
    violations: Violations = field(default_factory=Violations)
    double_runs: set[str] = field(default_factory=set)
    unplaced: list[str] = field(default_factory=list)  # not evacuated, with the recorded reason

    def sample(self, view: ClusterView) -> None:
        running: dict[str, list[str]] = {}
        for host, report in view.reports.items():
            if host in self.dead:
                continue
            for d in report.domains:
                if d.power_state in (PowerState.RUNNING, PowerState.PAUSED):
                    running.setdefault(d.uuid, []).append(host)
        for uuid, hosts in running.items():
            vm = self.vms.get(uuid)
            if vm is None:
                continue
            if len(hosts) > 1:
                self.double_runs.add(uuid)
                self.violations.add(f"{vm.name} runs on {len(hosts)} hosts at once: {', '.join(sorted(hosts))}")
            if not vm.running:
                self.violations.add(f"{vm.name} was powered off but runs on {', '.join(hosts)}")
            for h in hosts:  # a host-local VM is never evacuated: running at home is no stale copy
                if h in self.returned and h == vm.host and vm.shared:
                    self.violations.add(f"stale copy of {vm.name} started on returned host {h}")

    async def final(self, view: ClusterView, conn: asyncpg.Connection, failed: set[str]) -> tuple[int, int]:
        """After the system was quiet: every evacuable VM of a failed host runs (or, if
        it was off, is defined) exactly once elsewhere, or carries a recorded reason.
        Returns (evacuated, lost)."""
        evacuated = lost = 0
        open_ = await conn.fetch("SELECT source FROM evacuations WHERE status = 'running'")
        for r in open_:
            self.violations.add(f"evacuation of {r['source']} still open after the quiet bound")
        for vm in self.vms.values():
            if vm.host not in failed or not vm.shared:
                continue
            seen, stale = [], False
            for h, rep in sorted(view.reports.items()):
                if h in self.dead and h not in self.returned:
                    continue  # its last report is void: everything on it died
                here = [d for d in rep.domains if d.uuid == vm.uuid]
                if h == vm.host:
                    stale = bool(here) and h in self.returned
                    continue
                seen += [(h, d) for d in here]
            want = PowerState.RUNNING if vm.running else PowerState.SHUTOFF
            if len(seen) == 1 and seen[0][1].power_state == want:
                evacuated += 1
                if stale:
                    self.violations.add(f"stale copy of {vm.name} still defined on returned host {vm.host}")
                continue
            reason = await conn.fetchval(
                "SELECT status || ': ' || reason FROM evacuation_items WHERE instance_uuid = $1::uuid"
                " AND status IN ('no_capacity', 'failed', 'ha_off', 'not_evacuable') ORDER BY created_at DESC LIMIT 1",
                vm.uuid)
            if reason:
                self.unplaced.append(f"{vm.name}: {reason}")
                continue  # not evacuated, but recorded with its reason
            lost += 1
            where = ", ".join(f"{h} ({d.power_state})" for h, d in seen) or "nowhere"
            self.violations.add(f"{vm.name} of failed host {vm.host} is {where}, expected once {want}, no reason")
        return evacuated, lost
