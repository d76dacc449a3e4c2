"""Properties of the placement core that must hold for any cluster (hypothesis)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planner.placement import (
    AssignmentStatus,
    Flavor,
    GroupPolicy,
    HostInfo,
    InstanceInfo,
    Plan,
    Policy,
    RecoveryMethod,
    ServerGroup,
    plan,
)

HOST_NAMES = [f"h{i}" for i in range(8)]
PLACED = AssignmentStatus.PLACED
NO_CAPACITY = AssignmentStatus.NO_CAPACITY


@dataclass(frozen=True)
class Case:
    failed: list[str]
    instances: list[InstanceInfo]
    hosts: list[HostInfo]
    groups: list[ServerGroup]
    policy: Policy

    def run(self) -> Plan:
        return plan(self.failed, self.instances, self.hosts, self.groups, self.policy)


flavors = st.builds(
    Flavor,
    vcpus=st.integers(0, 4),
    memory_mib=st.sampled_from([0, 512, 1024, 2048, 4096, 8192]),
    disk_gib=st.integers(0, 40),
)


@st.composite
def hosts_strategy(draw: st.DrawFn) -> list[HostInfo]:
    count = draw(st.integers(1, len(HOST_NAMES)))
    return [
        HostInfo(
            name=name,
            vcpus=draw(st.integers(0, 8)),
            memory_mib=draw(st.sampled_from([0, 4096, 8192, 16384])),
            disk_gib=draw(st.integers(0, 100)),
            up=draw(st.booleans() | st.just(True)),
            enabled=draw(st.booleans() | st.just(True)),
            reserved=draw(st.booleans() | st.just(False)),
            cpu_ratio=draw(st.sampled_from([1.0, 1.5, 4.0])),
            ram_ratio=draw(st.sampled_from([1.0, 1.3, 1.5])),
            disk_ratio=draw(st.sampled_from([1.0, 2.0])),
            used=draw(flavors),
            aggregates=frozenset(draw(st.sets(st.sampled_from(["a", "b"])))),
        )
        for name in HOST_NAMES[:count]
    ]


@st.composite
def cases(draw: st.DrawFn, with_target: bool = True) -> Case:
    hosts = draw(hosts_strategy())
    names = [h.name for h in hosts]
    failed = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    count = draw(st.integers(0, 25))
    instances = [
        InstanceInfo(
            uuid=f"u{n:02d}",
            name=draw(st.sampled_from(["alpha", "beta", "gamma", f"vm{n}"])),
            host=draw(st.sampled_from(failed) | st.sampled_from(names)),
            flavor=draw(flavors),
            ha=draw(st.booleans() | st.just(True)),
            priority=draw(st.integers(0, 4)),
            evacuable=draw(st.booleans() | st.just(True)),
            aggregate=draw(st.none() | st.none() | st.sampled_from(["a", "b"])),
        )
        for n in range(count)
    ]
    uuids = [i.uuid for i in instances]
    groups = [
        ServerGroup(
            name=f"g{n}",
            policy=draw(st.sampled_from(list(GroupPolicy))),
            members=frozenset(draw(st.sets(st.sampled_from(uuids), max_size=6))) if uuids else frozenset(),
        )
        for n in range(draw(st.integers(0, 3)))
    ]
    methods = st.sampled_from(list(RecoveryMethod))
    policy = Policy(
        recovery={f: draw(methods) for f in failed if draw(st.booleans())},
        default_recovery=draw(methods),
        target=draw(st.none() | st.sampled_from(names)) if with_target else None,
        exclude={u: frozenset(draw(st.sets(st.sampled_from(names), max_size=2))) for u in uuids[:3]},
    )
    return Case(failed, instances, hosts, groups, policy)


def capacity(host: HostInfo) -> Flavor:
    return Flavor(
        math.floor(host.vcpus * host.cpu_ratio),
        math.floor(host.memory_mib * host.ram_ratio),
        math.floor(host.disk_gib * host.disk_ratio),
    )


COMMON = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(cases())
def test_no_host_ends_over_its_overcommitted_capacity(case: Case) -> None:
    result = case.run()
    flavor = {i.uuid: i.flavor for i in case.instances}
    added: dict[str, Flavor] = {}
    for a in result.assignments:
        if a.target is not None:
            added[a.target] = added.get(a.target, Flavor(0, 0, 0)) + flavor[a.instance_uuid]
    for host in case.hosts:
        if host.name in added:
            total, cap = host.used + added[host.name], capacity(host)
            assert total.vcpus <= cap.vcpus and total.memory_mib <= cap.memory_mib and total.disk_gib <= cap.disk_gib


@COMMON
@given(cases())
def test_targets_are_healthy_and_allowed_by_the_method(case: Case) -> None:
    result = case.run()
    info = {h.name: h for h in case.hosts}
    source = {i.uuid: i.host for i in case.instances}
    aggregate = {i.uuid: i.aggregate for i in case.instances}
    for a in result.assignments:
        if a.target is None:
            continue
        target = info[a.target]
        assert a.target not in case.failed and target.up and target.enabled
        assert a.target not in case.policy.exclude.get(a.instance_uuid, frozenset())
        assert aggregate[a.instance_uuid] in (None, *target.aggregates)
        if case.policy.target is not None:
            assert a.target == case.policy.target
            continue
        method = case.policy.method_for(source[a.instance_uuid])
        if target.reserved:
            assert a.target in result.reserved_taken
            assert method is not RecoveryMethod.AUTO or "already taken" in a.reason or "room appeared" in a.reason
        elif method is RecoveryMethod.RESERVED_HOST:
            raise AssertionError(f"{a} went to a non-reserved host under reserved_host")
    assert all(info[name].reserved for name in result.reserved_taken)
    assert len(set(result.reserved_taken)) == len(result.reserved_taken)


@COMMON
@given(cases())
def test_anti_affinity_is_never_violated_and_soft_only_with_a_reason(case: Case) -> None:
    result = case.run()
    where = {i.uuid: i.host for i in case.instances if i.host not in case.failed}
    moved = {a.instance_uuid: a.target for a in result.assignments if a.target is not None}
    by_uuid = {a.instance_uuid: a for a in result.assignments}
    for group in case.groups:
        if group.policy is GroupPolicy.AFFINITY:
            continue
        hosts = Counter(h for u in group.members if (h := moved.get(u) or where.get(u)) is not None)
        for host, count in hosts.items():
            arrived = [u for u in group.members if moved.get(u) == host]
            if count > 1 and arrived:
                assert group.policy is GroupPolicy.SOFT_ANTI_AFFINITY, [by_uuid[u] for u in arrived]
                broken = f"soft-anti-affinity group {group.name} broken"
                assert any(broken in by_uuid[u].reason for u in arrived)


@COMMON
@given(cases())
def test_every_instance_of_a_failed_host_gets_exactly_one_assignment_with_a_reason(case: Case) -> None:
    result = case.run()
    expected = sorted(i.uuid for i in case.instances if i.host in case.failed)
    if result.refused is not None:
        assert result.assignments == ()
        assert case.policy.target is not None and repr(case.policy.target) in result.refused
        return
    assert sorted(a.instance_uuid for a in result.assignments) == expected
    info = {i.uuid: i for i in case.instances}
    for a in result.assignments:
        assert a.reason
        instance = info[a.instance_uuid]
        if not instance.ha:
            assert a.status is AssignmentStatus.HA_OFF
        elif not instance.evacuable:
            assert a.status is AssignmentStatus.NOT_EVACUABLE
        else:
            assert a.status in (PLACED, NO_CAPACITY)
        assert (a.target is not None) == (a.status is PLACED)
        if a.status is PLACED:
            assert a.reason.startswith(f"{a.target}: ")


def dominated_by(small: Flavor, large: Flavor) -> bool:
    return small.vcpus <= large.vcpus and small.memory_mib <= large.memory_mib and small.disk_gib <= large.disk_gib


@COMMON
@given(cases())
def test_higher_priority_is_never_starved_by_lower(case: Case) -> None:
    """A higher-priority instance is never refused while a lower one of the same or a larger
    flavor, whose hosts it could have used, was placed. Constraints of its own (groups,
    aggregate, exclusions, a narrower recovery method) can refuse it legitimately, so the
    property is about instances without them, compared with instances of the same method."""
    result = case.run()
    info = {i.uuid: i for i in case.instances}
    in_group = {u for g in case.groups for u in g.members}
    for high in result.assignments:
        h = info[high.instance_uuid]
        if high.status is not NO_CAPACITY or h.uuid in in_group or h.aggregate or h.uuid in case.policy.exclude:
            continue
        for low in result.assignments:
            lo = info[low.instance_uuid]
            if (
                low.status is PLACED
                and lo.priority < h.priority
                and dominated_by(h.flavor, lo.flavor)
                and case.policy.method_for(lo.host) == case.policy.method_for(h.host)
            ):
                raise AssertionError(f"{high} refused while {low} was placed")


@COMMON
@given(cases(), st.randoms(use_true_random=False))
def test_same_input_in_any_order_gives_the_same_plan(case: Case, rng: random.Random) -> None:
    first = case.run()
    assert case.run() == first
    shuffled = Case(
        failed=rng.sample(case.failed, len(case.failed)),
        instances=rng.sample(case.instances, len(case.instances)),
        hosts=rng.sample(case.hosts, len(case.hosts)),
        groups=rng.sample(case.groups, len(case.groups)),
        policy=case.policy,
    )
    assert shuffled.run() == first
