"""Which hosts may take an instance: pools, aggregates, exclusions and server groups."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from services.planner.placement_hosts import HostState, Pool
from services.planner.placement_model import (
    NO_USAGE,
    Flavor,
    GroupPolicy,
    HostInfo,
    InstanceInfo,
    Policy,
    RecoveryMethod,
    ServerGroup,
)
from services.planner.placement_reasons import Cause

# Up to this many candidate hosts, a no-capacity reason gives every host's cause.
DETAILED_UP_TO = 32


class Rules:
    """The candidate hosts and where each server group's members are (updated as we go)."""

    def __init__(
        self,
        failed: frozenset[str],
        infos: dict[str, HostInfo],
        instances: Sequence[InstanceInfo],
        groups: Sequence[ServerGroup],
        placeable: Sequence[InstanceInfo],
    ) -> None:
        self.failed = failed
        self.infos = infos
        self.names = sorted(infos)
        self.candidates = {
            name: HostState(info) for name, info in infos.items() if name not in failed and info.up and info.enabled
        }
        self.never_candidates = {
            cause: names
            for cause, names in (
                ("failed", sorted(failed)),
                ("down", [n for n in self.names if n not in failed and not infos[n].up]),
                (
                    "disabled",
                    [n for n in self.names if n not in failed and infos[n].up and not infos[n].enabled],
                ),
            )
            if names
        }
        self._in_aggregate: dict[str | None, int] = {None: len(self.candidates)}
        self.groups: dict[str, ServerGroup] = {}
        for group in groups:
            if group.name in self.groups:
                raise ValueError(f"server group {group.name!r} is listed twice; each group once")
            self.groups[group.name] = group
        self.member_of: dict[str, list[ServerGroup]] = {}
        for group in sorted(groups, key=lambda g: g.name):
            for uuid in group.members:
                self.member_of.setdefault(uuid, []).append(group)
        for instance in instances:
            named = self.groups.get(instance.group) if instance.group else None
            if named is not None:
                mine = self.member_of.setdefault(instance.uuid, [])
                if named not in mine:
                    mine.append(named)
                    mine.sort(key=lambda g: g.name)
        self.where: dict[str, Counter[str]] = {name: Counter() for name in self.groups}
        for instance in instances:
            if instance.host not in failed:
                for group in self.member_of.get(instance.uuid, ()):
                    self.where[group.name][instance.host] += 1
        # An affinity group whose members run on a healthy host pulls its evacuees there.
        self.anchors: dict[str, str | None] = {}
        self.demand: dict[str, tuple[int, Flavor]] = {}
        for group in self.groups.values():
            if group.policy is GroupPolicy.AFFINITY:
                here = Counter({h: n for h, n in self.where[group.name].items() if h in self.candidates})
                self.anchors[group.name] = min(here, key=lambda h: (-here[h], h), default=None)
                self.demand[group.name] = (0, NO_USAGE)
        for instance in placeable:
            for group in self.member_of.get(instance.uuid, ()):
                if group.name in self.demand:
                    count, total = self.demand[group.name]
                    self.demand[group.name] = (count + 1, total + instance.flavor)

    def candidate(self, instance: InstanceInfo, policy: Policy, pools: tuple[Pool, ...]) -> Candidate:
        mine = self.member_of.get(instance.uuid, ())
        excluded = policy.exclude.get(instance.uuid, _NONE) if policy.exclude else _NONE
        method = policy.method_for(instance.host)
        if not mine:  # the common case, kept cheap
            return Candidate(self, instance, method, pools, policy.target, excluded, (instance.flavor,))
        anti = tuple(g.name for g in mine if g.policy is GroupPolicy.ANTI_AFFINITY)
        soft = tuple(g.name for g in mine if g.policy is GroupPolicy.SOFT_ANTI_AFFINITY)
        affinity = tuple(g.name for g in mine if g.policy is GroupPolicy.AFFINITY)
        anchors = {a for g in affinity if (a := self.anchors[g]) is not None}
        needs: tuple[Flavor, ...] = (instance.flavor,)
        together = 0
        if len(anchors) > 1:
            needs = ()  # two affinity groups pull it to different hosts
        elif not anchors and affinity:
            biggest = max(affinity, key=lambda g: self.demand[g][0])  # first of equals: by name
            together, total = self.demand[biggest]
            if together > 1:
                needs = (total, instance.flavor)
        return Candidate(
            self,
            instance,
            method,
            pools,
            policy.target,
            excluded,
            needs,
            anti=anti,
            soft=soft,
            affinity=affinity,
            anchor=min(anchors) if anchors else None,
            split_anchors=len(anchors) > 1,
            together=together,
            soft_passes=(True, False) if soft else (True,),
        )

    def record(self, instance: InstanceInfo, host: str) -> None:
        for group in self.member_of.get(instance.uuid, ()):
            self.where[group.name][host] += 1
            if group.name in self.anchors and self.anchors[group.name] is None:
                self.anchors[group.name] = host

    def in_aggregate(self, aggregate: str | None) -> int:
        """How many candidate hosts are in ``aggregate`` (all of them for None)."""
        if aggregate not in self._in_aggregate:
            self._in_aggregate[aggregate] = sum(1 for h in self.candidates.values() if aggregate in h.info.aggregates)
        return self._in_aggregate[aggregate]

    def holds_member(self, groups: tuple[str, ...], host: str) -> str | None:
        for name in groups:
            if self.where[name].get(host):
                return name
        return None


_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class Candidate:
    """One instance's constraints, evaluated against hosts as the plan fills them."""

    rules: Rules
    instance: InstanceInfo
    method: RecoveryMethod
    pools: tuple[Pool, ...]
    target: str | None
    excluded: frozenset[str]
    needs: tuple[Flavor, ...]  # tried in order: the whole affinity group first, then the instance
    anti: tuple[str, ...] = ()
    soft: tuple[str, ...] = ()
    affinity: tuple[str, ...] = ()
    anchor: str | None = None
    split_anchors: bool = False
    together: int = 0  # members of an anchorless affinity group to place together
    soft_passes: tuple[bool, ...] = (True,)  # keep soft-anti-affinity, then (if need be) break it

    @property
    def is_plain(self) -> bool:
        """No groups and no exclusions: the same flavor, method and aggregate fare alike."""
        return not (self.excluded or self.anti or self.soft or self.affinity)

    @property
    def anchor_lead(self) -> str:
        return f"affinity group {', '.join(self.affinity)} runs there"

    def accepts(self, host: HostState, need: Flavor, keep_soft: bool, in_pool: bool) -> bool:
        """Whether ``host`` may take ``need`` for this instance; ``in_pool`` when the caller
        already knows the host is in one of the allowed pools."""
        name = host.name
        aggregate = self.instance.aggregate
        return (
            (in_pool or not host.pools.isdisjoint(self.pools))
            and (aggregate is None or aggregate in host.info.aggregates)
            and name not in self.excluded
            and (self.anchor is None or name == self.anchor)
            and (not self.anti or self.rules.holds_member(self.anti, name) is None)
            and (not keep_soft or not self.soft or self.rules.holds_member(self.soft, name) is None)
            and host.fits(need)
        )

    def notes(self, need: Flavor, keep_soft: bool) -> list[str]:
        notes = []
        if self.instance.aggregate is not None:
            notes.append(f"in aggregate {self.instance.aggregate}")
        if self.excluded:
            notes.append(f"avoiding {', '.join(sorted(self.excluded))} (failed it before)")
        notes.extend(f"anti-affinity group {g} respected" for g in self.anti)
        for group in self.soft:
            if keep_soft:
                notes.append(f"soft-anti-affinity group {group} respected")
            else:
                notes.append(f"soft-anti-affinity group {group} broken: no host without a member had room")
        for group in self.affinity:
            if self.anchor is not None:
                notes.append(f"affinity group {group} kept together")
            elif self.together > 1 and need != self.instance.flavor:
                notes.append(f"affinity group {group}: host chosen to fit all {self.together} members")
            elif self.together > 1:
                notes.append(
                    f"affinity group {group}: no host fits all {self.together} "
                    "members, the others follow while there is room"
                )
            else:
                notes.append(f"affinity group {group}: only member to place")
        return notes


def heap_miss_causes(
    rules: Rules, cand: Candidate, need: Flavor, examined: Sequence[HostState], allowed: int
) -> list[Cause]:
    """Why no host took ``need``. A small cluster gets every host's cause, by name; a large
    one the hosts the search looked at (roomiest first), counts of the others, then the
    hosts that were never candidates, so the reason costs no full scan."""
    named: dict[str, list[str]] = {}
    if len(rules.candidates) <= DETAILED_UP_TO:
        for name in rules.names:
            named.setdefault(_cause(rules, cand, need, name), []).append(name)
        return list(named.items())
    seen: set[str] = set()
    for host in examined:
        if host.name not in seen:
            seen.add(host.name)
            named.setdefault(_cause(rules, cand, need, host.name), []).append(host.name)
    causes: list[Cause] = list(named.items())
    if allowed > len(seen):
        causes.append(("more without room (less free RAM than needed, or full)", allowed - len(seen)))
    aggregate = cand.instance.aggregate
    in_aggregate = rules.in_aggregate(aggregate)
    if in_aggregate > allowed:
        causes.append((_pool_cause(cand, plural=True), in_aggregate - allowed))
    if aggregate is not None and len(rules.candidates) > in_aggregate:
        causes.append((f"not in aggregate {aggregate}", len(rules.candidates) - in_aggregate))
    causes.extend(rules.never_candidates.items())
    return causes


def host_causes(rules: Rules, cand: Candidate, need: Flavor, name: str) -> list[Cause]:
    if cand.split_anchors:
        return [(f"affinity groups {', '.join(cand.affinity)} run on different hosts", [])]
    return [(_cause(rules, cand, need, name), [name])]


def _pool_cause(cand: Candidate, plural: bool) -> str:
    it = "them" if plural else "it"
    if Pool.RESERVED in cand.pools:
        return f"not reserved (recovery method {cand.method} uses reserved hosts only)"
    return f"reserved (recovery method {cand.method} does not use {it})"


def _cause(rules: Rules, cand: Candidate, need: Flavor, name: str) -> str:
    info = rules.infos[name]
    if name in rules.failed:
        return "failed"
    if not info.up:
        return "down"
    if not info.enabled:
        return "disabled"
    host = rules.candidates[name]
    if cand.target is None and host.pools.isdisjoint(cand.pools):
        return _pool_cause(cand, plural=False)
    aggregate = cand.instance.aggregate
    if aggregate is not None and aggregate not in info.aggregates:
        return f"not in aggregate {aggregate}"
    if name in cand.excluded:
        return "already failed this instance"
    if cand.split_anchors:
        return f"affinity groups {', '.join(cand.affinity)} run on different hosts"
    if cand.anchor is not None and name != cand.anchor:
        return f"not where affinity group {', '.join(cand.affinity)} runs ({cand.anchor})"
    group = rules.holds_member(cand.anti, name)
    if group is not None:
        return f"holds a member of anti-affinity group {group}"
    short = host.shortages(need)
    if short:
        return "short of " + " and ".join(short)
    return "not chosen"
