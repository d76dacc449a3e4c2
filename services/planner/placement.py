"""Where the instances of failed hosts go: the pure placement core of the planner.

``plan()`` reads plain data and returns a :class:`Plan`; it does no I/O and reads no
clock. Rules, in the order they apply to each instance:

* Only instances on a failed host get an assignment. HA off -> ``ha_off``; not evacuable
  -> ``not_evacuable``; both carry a reason.
* Higher ``priority`` is placed first; ties by name, then uuid. Assignments come out in
  that order, so the same input in any order gives the same plan.
* A target is up, enabled and not failed, has room in all three dimensions
  (``floor(physical × ratio) − used``), is in the instance's aggregate if it names one,
  and did not already fail the instance (``Policy.exclude``).
* The source host's recovery method picks the pools: ``auto`` non-reserved hosts,
  ``reserved_host`` reserved hosts, ``auto_priority`` non-reserved then reserved,
  ``rh_priority`` reserved then non-reserved. A reserved host that receives an instance
  is listed in ``Plan.reserved_taken`` and counts as non-reserved from then on; instances
  that found no room before it was taken are tried on it again, in priority order, so a
  lower priority never gets room a higher one could have used.
* anti-affinity is never broken; soft-anti-affinity is broken only when no other host has
  room, and the reason says so; affinity members join their group's members on a healthy
  (up, enabled, not failed) host, the one with most members if they are split, or (if
  there is none) go together to the first host chosen for the group, which is picked to
  fit the whole group when some host can; an affinity group is never split by the plan.
* Among the allowed hosts the one with the most free RAM after placement wins (ties by
  name), which spreads the load.
* ``Policy.target`` (manual evacuation) replaces the choice and the recovery method (a
  reserved target is taken): every instance goes there or gets ``no_capacity`` with the
  reason. An unknown, down, disabled or failed target, or one without room for all the
  HA, evacuable instances together, refuses the whole plan.
* A ``no_capacity`` reason names every host's cause on a small cluster; on a large one it
  names the hosts the search looked at and counts the rest, so it costs no full scan.

Group locations come from ``instances``: pass the members on healthy hosts too (they
get no assignment). A member listed in a group but absent from ``instances`` is ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from services.planner import placement_reasons as reasons
from services.planner.placement_hosts import HostHeaps, HostState, Pool
from services.planner.placement_model import (
    NO_USAGE,
    Assignment,
    AssignmentStatus,
    Flavor,
    GroupPolicy,
    HostInfo,
    InstanceInfo,
    Plan,
    Policy,
    Priority,
    RecoveryMethod,
    ServerGroup,
)
from services.planner.placement_rules import Candidate, Rules, heap_miss_causes, host_causes

__all__ = [
    "Assignment",
    "AssignmentStatus",
    "Flavor",
    "GroupPolicy",
    "HostInfo",
    "InstanceInfo",
    "Plan",
    "Policy",
    "Priority",
    "RecoveryMethod",
    "ServerGroup",
    "plan",
]

_DEFAULT_POLICY = Policy()

METHOD_POOLS: dict[RecoveryMethod, tuple[Pool, ...]] = {
    RecoveryMethod.AUTO: (Pool.NORMAL,),
    RecoveryMethod.RESERVED_HOST: (Pool.RESERVED,),
    RecoveryMethod.AUTO_PRIORITY: (Pool.NORMAL, Pool.RESERVED),
    RecoveryMethod.RH_PRIORITY: (Pool.RESERVED, Pool.NORMAL),
}


def placement_order(instance: InstanceInfo) -> tuple[int, str, str]:
    return (-instance.priority, instance.name, instance.uuid)


def plan(
    failed_hosts: Collection[str],
    instances: Sequence[InstanceInfo],
    hosts: Sequence[HostInfo],
    groups: Sequence[ServerGroup] = (),
    policy: Policy = _DEFAULT_POLICY,
) -> Plan:
    """Place every instance of ``failed_hosts``; see the module docstring for the rules."""
    failed = frozenset(failed_hosts)
    infos = _by_unique_name(hosts)
    _check_unique_uuids(instances)
    evacuees = sorted((i for i in instances if i.host in failed), key=placement_order)
    placeable = [i for i in evacuees if i.ha and i.evacuable]
    if policy.target is not None:
        refusal = _refuse_target(policy.target, failed, infos, placeable)
        if refusal is not None:
            return Plan(assignments=(), refused=refusal)
    planner = _Planner(failed, infos, instances, groups, policy, placeable)
    return planner.run(evacuees)


def _by_unique_name(hosts: Sequence[HostInfo]) -> dict[str, HostInfo]:
    infos: dict[str, HostInfo] = {}
    for host in hosts:
        if host.name in infos:
            raise ValueError(f"host {host.name!r} is listed twice; each host once")
        infos[host.name] = host
    return infos


def _check_unique_uuids(instances: Sequence[InstanceInfo]) -> None:
    seen: set[str] = set()
    for instance in instances:
        if instance.uuid in seen:
            raise ValueError(f"instance {instance.uuid!r} is listed twice; each instance once")
        seen.add(instance.uuid)


def _total(flavors: Sequence[Flavor]) -> Flavor:
    total = NO_USAGE
    for flavor in flavors:
        total = total + flavor
    return total


def _refuse_target(
    target: str, failed: frozenset[str], infos: dict[str, HostInfo], placeable: list[InstanceInfo]
) -> str | None:
    info = infos.get(target)
    if info is None:
        return reasons.target_refused(target, "is unknown")
    if target in failed:
        return reasons.target_refused(target, "is one of the failed hosts")
    if not info.up:
        return reasons.target_refused(target, "is not up")
    if not info.enabled:
        return reasons.target_refused(target, "is disabled")
    demand = _total([i.flavor for i in placeable])
    state = HostState(info)
    if not state.fits(demand):
        return reasons.target_too_small(target, len(placeable), demand, state.free)
    return None


class _Planner:
    """One plan's mutable state: host usage, group locations, reserved hosts taken."""

    def __init__(
        self,
        failed: frozenset[str],
        infos: dict[str, HostInfo],
        instances: Sequence[InstanceInfo],
        groups: Sequence[ServerGroup],
        policy: Policy,
        placeable: list[InstanceInfo],
    ) -> None:
        self.policy = policy
        self.rules = Rules(failed, infos, instances, groups, placeable)
        self.hosts = self.rules.candidates
        smallest = Flavor(
            min((i.flavor.vcpus for i in placeable), default=0),
            min((i.flavor.memory_mib for i in placeable), default=0),
            min((i.flavor.disk_gib for i in placeable), default=0),
        )
        wanted = {i.aggregate for i in placeable if i.aggregate is not None}
        self.heaps = HostHeaps(wanted, smallest, self.hosts)
        for name in sorted(self.hosts):
            host = self.hosts[name]
            self.heaps.add(host, Pool.RESERVED if host.info.reserved else Pool.NORMAL)
        self.taken: list[str] = []
        self.results: dict[int, Assignment] = {}
        self.waiting: list[tuple[int, InstanceInfo]] = []  # no room yet; may fit a taken host

    def run(self, evacuees: list[InstanceInfo]) -> Plan:
        for index, instance in enumerate(evacuees):
            if not instance.ha:
                self._decide(index, instance, None, AssignmentStatus.HA_OFF, "HA is off")
            elif not instance.evacuable:
                why = instance.not_evacuable_reason or "not evacuable"
                self._decide(index, instance, None, AssignmentStatus.NOT_EVACUABLE, why)
            else:
                self._place(index, instance)
        ordered = tuple(self.results[i] for i in range(len(evacuees)))
        return Plan(assignments=ordered, reserved_taken=tuple(self.taken))

    def _decide(
        self,
        index: int,
        instance: InstanceInfo,
        target: str | None,
        status: AssignmentStatus,
        reason: str,
    ) -> None:
        self.results[index] = Assignment(instance.uuid, instance.name, instance.host, target, status, reason)

    def _place(self, index: int, instance: InstanceInfo, only: HostState | None = None) -> None:
        method = self.policy.method_for(instance.host)
        candidate = self.rules.candidate(instance, self.policy, METHOD_POOLS[method])
        found = self._find(candidate, only)
        if not isinstance(found, tuple):
            if only is None:  # a retry that fails keeps the reason it already has
                self._no_room(index, candidate, found)
            return
        host, lead, notes = found
        if only is not None:
            lead = f"room appeared when reserved host {host.name} was taken"
        newly_taken = self._commit(instance, host)
        if newly_taken:
            notes.insert(0, f"reserved host taken (recovery method {method})")
        elif host.info.reserved:
            notes.insert(0, "reserved host already taken by this plan")
        reason = reasons.placed(host.name, lead, host.free_memory, notes)
        self._decide(index, instance, host.name, AssignmentStatus.PLACED, reason)
        if newly_taken:
            self._retry_waiting(host)

    def _no_room(self, index: int, candidate: Candidate, examined: list[HostState]) -> None:
        instance, need = candidate.instance, candidate.instance.flavor
        head = f"no host can take {need.describe()}"
        if self.policy.target is not None:
            head = f"target {self.policy.target} cannot take {need.describe()}"
            causes = host_causes(self.rules, candidate, need, self.policy.target)
        elif candidate.anchor is not None or candidate.split_anchors:
            if candidate.anchor is not None:
                head = (
                    f"affinity group {', '.join(candidate.affinity)} runs on "
                    f"{candidate.anchor}, which cannot take {need.describe()}"
                )
            causes = host_causes(self.rules, candidate, need, candidate.anchor or "")
        else:
            causes = heap_miss_causes(self.rules, candidate, need, examined, self._allowed(candidate))
            if Pool.NORMAL in candidate.pools:
                self.waiting.append((index, instance))
        self._decide(index, instance, None, AssignmentStatus.NO_CAPACITY, reasons.no_capacity(head, causes))

    def _allowed(self, candidate: Candidate) -> int:
        """How many candidate hosts the instance's method and aggregate allow."""
        aggregate = candidate.instance.aggregate
        if len(candidate.pools) > 1:
            return self.rules.in_aggregate(aggregate)
        return self.heaps.count(candidate.pools[0], aggregate)

    def _find(self, candidate: Candidate, only: HostState | None) -> tuple[HostState, str, list[str]] | list[HostState]:
        """The host for ``candidate``, how it was chosen and notes on the constraints; or,
        when none will do, the hosts of the last search that were looked at and refused."""
        fixed, lead = only, "most free RAM after placement"
        if self.policy.target is not None:
            fixed, lead = self.hosts[self.policy.target], "operator-chosen target"
        elif candidate.anchor is not None:
            anchored = self.hosts[candidate.anchor]
            if fixed is not None and fixed is not anchored:
                return []
            fixed, lead = anchored, candidate.anchor_lead
        examined: list[HostState] = []
        for need in candidate.needs:
            for keep_soft in candidate.soft_passes:
                examined = []
                if fixed is not None:
                    any_pool = self.policy.target is not None  # the operator's choice
                    if candidate.accepts(fixed, need, keep_soft, in_pool=any_pool):
                        return fixed, lead, candidate.notes(need, keep_soft)
                    continue

                def accept(host: HostState, n: Flavor = need, k: bool = keep_soft) -> bool:
                    return candidate.accepts(host, n, k, in_pool=True)

                for pool in candidate.pools:
                    aggregate = candidate.instance.aggregate
                    host = self.heaps.best(pool, aggregate, need, accept, examined)
                    if host is not None:
                        return host, lead, candidate.notes(need, keep_soft)
        return examined

    def _commit(self, instance: InstanceInfo, host: HostState) -> bool:
        """Use ``host`` for ``instance``; True when that takes a reserved host."""
        host.take(instance.flavor)
        self.heaps.changed(host)
        self.rules.record(instance, host.name)
        if Pool.RESERVED in host.pools and Pool.NORMAL not in host.pools:
            self.taken.append(host.name)
            self.heaps.add(host, Pool.NORMAL)
            return True
        return False

    def _retry_waiting(self, host: HostState) -> None:
        """Give a just-taken reserved host to the waiting instances first (priority order)."""
        waiting, self.waiting = self.waiting, []
        for position, (index, instance) in enumerate(waiting):
            if not host.fits(self.heaps.smallest):
                self.waiting.extend(waiting[position:])
                return
            if host.fits(instance.flavor):
                self._place(index, instance, only=host)
            if self.results[index].status is not AssignmentStatus.PLACED:
                self.waiting.append((index, instance))
