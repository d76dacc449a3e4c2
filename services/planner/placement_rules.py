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
        by_policy: dict[GroupPolicy, list[str]] = {p: [] for p in GroupPolicy}
        for group in mine:
            by_policy[group.policy].append(group.name)
        affinity = by_policy[GroupPolicy.AFFINITY]
        anchors = {a for g in affinity if (a := self.anchors[g]) is not None}
        needs: tuple[Flavor, ...] = (instance.flavor,)
        together = 0
        if len(anchors) > 1:
            needs = ()  # two affinity groups pull it to different hosts
        elif not anchors and affinity:
            together, total = max(self.demand[g] for g in affinity)
            if together > 1:
                needs = (total, instance.flavor)
        soft = by_policy[GroupPolicy.SOFT_ANTI_AFFINITY]
        return Candidate(
            rules=self,
            instance=instance,
            method=policy.method_for(instance.host),
            pools=pools,
            target=policy.target,
            excluded=policy.exclude.get(instance.uuid, frozenset()),
            anti=tuple(by_policy[GroupPolicy.ANTI_AFFINITY]),
            soft=tuple(soft),
            affinity=tuple(affinity),
            anchor=min(anchors) if anchors else None,
            split_anchors=len(anchors) > 1,
            together=together,
            needs=needs,
            soft_passes=(True, False) if soft else (True,),
        )

    def record(self, instance: InstanceInfo, host: str) -> None:
        for group in self.member_of.get(instance.uuid, ()):
            self.where[group.name][host] += 1
            if group.name in self.anchors and self.anchors[group.name] is None:
                self.anchors[group.name] = host

    def holds_member(self, groups: tuple[str, ...], host: str) -> str | None:
        for name in groups:
            if self.where[name].get(host):
                return name
        return None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One instance's constraints, evaluated against hosts as the plan fills them."""

    rules: Rules
    instance: InstanceInfo
    method: RecoveryMethod
    pools: tuple[Pool, ...]
    target: str | None
    excluded: frozenset[str]
    anti: tuple[str, ...]
    soft: tuple[str, ...]
    affinity: tuple[str, ...]
    anchor: str | None
    split_anchors: bool
    together: int  # members of an anchorless affinity group to place together
    needs: tuple[Flavor, ...]  # tried in order: the whole group first, then the instance
    soft_passes: tuple[bool, ...]  # keep soft-anti-affinity, then (if need be) break it

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


def no_capacity_causes(rules: Rules, cand: Candidate, need: Flavor) -> dict[str, list[str]]:
    """Why each host cannot take ``need`` for ``cand``: cause -> host names, in order."""
    causes: dict[str, list[str]] = {}
    for name in rules.names:
        if cand.target is not None and name != cand.target:
            continue
        cause = _cause(rules, cand, need, name)
        causes.setdefault(cause, []).append(name)
    return causes


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
        if Pool.RESERVED in host.pools:
            return f"reserved (recovery method {cand.method} does not use it)"
        return f"not reserved (recovery method {cand.method} uses reserved hosts only)"
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
