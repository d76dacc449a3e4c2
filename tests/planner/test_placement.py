"""One test per placement rule of the pure planner core."""

from __future__ import annotations

import pytest

from services.planner.placement import (
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
    plan,
)

SMALL = Flavor(1, 1024, 10)
MEDIUM = Flavor(2, 4096, 20)
PLACED = AssignmentStatus.PLACED
NO_CAPACITY = AssignmentStatus.NO_CAPACITY


def host(name: str, memory_mib: int = 16384, **kwargs: object) -> HostInfo:
    fields: dict[str, object] = {"vcpus": 8, "disk_gib": 500, "ram_ratio": 1.0}
    fields.update(kwargs)
    return HostInfo(name=name, memory_mib=memory_mib, **fields)  # type: ignore[arg-type]


def vm(uuid: str, host: str = "f1", flavor: Flavor = MEDIUM, **kwargs: object) -> InstanceInfo:
    return InstanceInfo(uuid=uuid, name=kwargs.pop("name", uuid), host=host, flavor=flavor, **kwargs)  # type: ignore[arg-type]


def by_uuid(result: Plan) -> dict[str, Assignment]:
    return {a.instance_uuid: a for a in result.assignments}


def targets(result: Plan) -> dict[str, str | None]:
    return {a.instance_uuid: a.target for a in result.assignments}


# --- what gets an assignment -----------------------------------------------------------


def test_only_instances_of_failed_hosts_are_placed() -> None:
    result = plan(["f1"], [vm("a"), vm("b", host="h1")], [host("f1"), host("h1")])
    assert [a.instance_uuid for a in result.assignments] == ["a"]
    assert result.assignments[0].source == "f1"
    assert result.assignments[0].target == "h1"


def test_ha_off_and_not_evacuable_are_reported_with_their_reason() -> None:
    instances = [
        vm("off", ha=False),
        vm("local", evacuable=False, not_evacuable_reason="disk on local storage"),
        vm("plain", evacuable=False),
    ]
    result = by_uuid(plan(["f1"], instances, [host("f1"), host("h1")]))
    assert result["off"].status is AssignmentStatus.HA_OFF
    assert result["off"].reason == "HA is off"
    assert result["local"].status is AssignmentStatus.NOT_EVACUABLE
    assert result["local"].reason == "disk on local storage"
    assert result["plain"].reason == "not evacuable"
    assert all(a.target is None for a in result.values())


def test_nothing_to_do_gives_an_empty_plan() -> None:
    assert plan(["f1"], [], [host("h1")]) == Plan(assignments=())


# --- priority --------------------------------------------------------------------------


def test_higher_priority_is_placed_first_and_wins_the_last_room() -> None:
    instances = [
        vm("low", priority=Priority.LOWEST),
        vm("high", priority=Priority.HIGHEST),
        vm("mid", priority=Priority.MEDIUM),
    ]
    result = plan(["f1"], instances, [host("f1"), host("h1", memory_mib=8192)])
    assert [a.instance_uuid for a in result.assignments] == ["high", "mid", "low"]
    assert [a.status for a in result.assignments] == [PLACED, PLACED, NO_CAPACITY]


def test_priority_ties_are_broken_by_name_then_uuid() -> None:
    instances = [vm("u3", name="b"), vm("u2", name="a"), vm("u1", name="b")]
    result = plan(["f1"], instances, [host("f1"), host("h1")])
    assert [a.instance_uuid for a in result.assignments] == ["u2", "u1", "u3"]


def test_priority_levels_are_ordered_integers() -> None:
    assert [int(p) for p in Priority] == [0, 1, 2, 3, 4]
    assert Priority.HIGHEST > Priority.HIGH > Priority.MEDIUM > Priority.LOW > Priority.LOWEST
    assert InstanceInfo("u", "n", "h", SMALL).priority == Priority.MEDIUM


# --- capacity --------------------------------------------------------------------------


def test_capacity_is_physical_times_ratio_minus_used_in_every_dimension() -> None:
    # 2 physical vCPU x 4.0 = 8, 2 used -> room for three 2-vCPU instances.
    cpu_bound = host("h1", vcpus=2, cpu_ratio=4.0, memory_mib=65536, used=Flavor(2, 0, 0))
    result = plan(["f1"], [vm(f"v{i}") for i in range(4)], [host("f1"), cpu_bound])
    assert [a.status for a in result.assignments] == [PLACED] * 3 + [NO_CAPACITY]
    assert "short of vCPU" in result.assignments[3].reason

    # 4096 MiB x 1.5 = 6144 -> one 4096 MiB instance, not two.
    ram_bound = host("h1", memory_mib=4096, ram_ratio=1.5)
    result = plan(["f1"], [vm("a"), vm("b")], [host("f1"), ram_bound])
    assert [a.status for a in result.assignments] == [PLACED, NO_CAPACITY]

    # 30 GiB x 1.0 with 10 used -> one 20 GiB instance.
    disk_bound = host("h1", disk_gib=30, used=Flavor(0, 0, 10))
    result = plan(["f1"], [vm("a"), vm("b")], [host("f1"), disk_bound])
    assert [a.status for a in result.assignments] == [PLACED, NO_CAPACITY]
    assert "short of disk" in result.assignments[1].reason


def test_an_exact_fit_is_allowed() -> None:
    result = plan(["f1"], [vm("a")], [host("f1"), host("h1", vcpus=2, cpu_ratio=1.0, memory_mib=4096, disk_gib=20)])
    assert result.assignments[0].status is PLACED


def test_failed_down_and_disabled_hosts_are_never_targets_and_are_named() -> None:
    hosts = [host("f1"), host("f2"), host("d1", up=False), host("x1", enabled=False)]
    result = plan(["f1", "f2"], [vm("a")], hosts)
    (only,) = result.assignments
    assert only.status is NO_CAPACITY
    assert only.reason == (
        "no host can take 2 vCPU / 4096 MiB RAM / 20 GiB disk: down: d1; failed: f1, f2; disabled: x1"
    )


def test_no_capacity_reason_names_every_host_of_a_small_cluster() -> None:
    hosts = [host("f1"), host("h1", memory_mib=2048), host("h2", memory_mib=65536, vcpus=1, cpu_ratio=1.0)]
    (only,) = plan(["f1"], [vm("a")], hosts).assignments
    assert only.reason == (
        "no host can take 2 vCPU / 4096 MiB RAM / 20 GiB disk: failed: f1; short of RAM: h1; short of vCPU: h2"
    )


def test_no_capacity_reason_in_a_large_cluster_names_the_roomiest_and_counts_the_rest() -> None:
    hosts = [host("f1"), host("d1", up=False)] + [host(f"h{i:02d}", memory_mib=2048 + i) for i in range(40)]
    hosts.append(host("cpu", memory_mib=65536, vcpus=1, cpu_ratio=1.0))
    hosts.append(host("r1", reserved=True))
    instances = [vm("a", priority=4), vm("b", flavor=Flavor(1, 60000, 10), priority=0)]
    result = by_uuid(plan(["f1"], instances, hosts))
    assert result["a"].reason == (
        "no host can take 2 vCPU / 4096 MiB RAM / 20 GiB disk: short of vCPU: cpu; "
        "40 more without room (less free RAM than needed, or full); "
        "1 reserved (recovery method auto does not use them); failed: f1; down: d1"
    )
    assert result["b"].target == "cpu"


def test_spread_picks_most_free_ram_after_placement_ties_by_name() -> None:
    hosts = [host("f1"), host("hb", memory_mib=8192), host("ha", memory_mib=8192), host("hc", memory_mib=6144)]
    result = plan(["f1"], [vm("a", name="1"), vm("b", name="2"), vm("c", name="3")], hosts)
    assert [a.target for a in result.assignments] == ["ha", "hb", "hc"]
    assert result.assignments[0].reason == "ha: most free RAM after placement (free 4096 MiB)"


def test_a_host_already_over_its_capacity_takes_nothing() -> None:
    result = plan(["f1"], [vm("a", flavor=Flavor(0, 0, 0))], [host("f1"), host("h1", used=Flavor(0, 20000, 0))])
    assert result.assignments[0].status is NO_CAPACITY


# --- recovery methods and reserved hosts -----------------------------------------------


def reserved_setup() -> list[HostInfo]:
    return [host("f1"), host("n1", memory_mib=4096), host("r1", reserved=True), host("r2", reserved=True)]


def plan_with(method: RecoveryMethod, count: int, hosts: list[HostInfo] | None = None) -> Plan:
    instances = [vm(f"v{i}") for i in range(count)]
    return plan(["f1"], instances, hosts or reserved_setup(), policy=Policy(recovery={"f1": method}))


def test_auto_never_uses_reserved_hosts() -> None:
    result = plan_with(RecoveryMethod.AUTO, 2)
    assert targets(result) == {"v0": "n1", "v1": None}
    assert result.reserved_taken == ()
    assert "reserved (recovery method auto does not use it): r1, r2" in result.assignments[1].reason


def test_reserved_host_uses_only_reserved_hosts_and_lists_them_taken() -> None:
    result = plan_with(RecoveryMethod.RESERVED_HOST, 2)
    assert targets(result) == {"v0": "r1", "v1": "r2"}
    assert result.reserved_taken == ("r1", "r2")
    assert "reserved host taken (recovery method reserved_host)" in result.assignments[0].reason


def test_reserved_host_without_reserved_hosts_gives_no_capacity() -> None:
    result = plan_with(RecoveryMethod.RESERVED_HOST, 1, [host("f1"), host("n1")])
    assert result.assignments[0].status is NO_CAPACITY
    assert "not reserved (recovery method reserved_host uses reserved hosts only): n1" in result.assignments[0].reason


def test_auto_priority_tries_normal_hosts_then_reserved() -> None:
    result = plan_with(RecoveryMethod.AUTO_PRIORITY, 2)
    assert targets(result) == {"v0": "n1", "v1": "r1"}
    assert result.reserved_taken == ("r1",)


def test_rh_priority_tries_reserved_hosts_then_normal() -> None:
    hosts = [host("f1"), host("n1", memory_mib=65536), host("r1", reserved=True, memory_mib=4096)]
    result = plan_with(RecoveryMethod.RH_PRIORITY, 2, hosts)
    assert targets(result) == {"v0": "r1", "v1": "n1"}


def test_a_taken_reserved_host_serves_other_sources_as_a_normal_host() -> None:
    hosts = [host("f1"), host("f2"), host("r1", reserved=True)]
    instances = [vm("first", priority=3), vm("second", host="f2", priority=1)]
    policy = Policy(recovery={"f1": RecoveryMethod.RESERVED_HOST, "f2": RecoveryMethod.AUTO})
    result = plan(["f1", "f2"], instances, hosts, policy=policy)
    assert targets(result) == {"first": "r1", "second": "r1"}
    assert "reserved host already taken by this plan" in by_uuid(result)["second"].reason
    assert result.reserved_taken == ("r1",)


def test_a_higher_priority_instance_gets_a_reserved_host_taken_after_it_was_refused() -> None:
    hosts = [host("f1"), host("f2"), host("r1", reserved=True, memory_mib=8192)]
    instances = [vm("high", priority=4), vm("low", host="f2", priority=0)]
    policy = Policy(recovery={"f1": RecoveryMethod.AUTO, "f2": RecoveryMethod.RESERVED_HOST})
    result = by_uuid(plan(["f1", "f2"], instances, hosts, policy=policy))
    assert result["low"].target == "r1"
    assert result["high"].target == "r1"
    assert result["high"].reason.startswith("r1: room appeared when reserved host r1 was taken")


def test_default_recovery_applies_to_failed_hosts_without_their_own() -> None:
    policy = Policy(default_recovery=RecoveryMethod.RESERVED_HOST)
    result = plan(["f1"], [vm("a")], reserved_setup(), policy=policy)
    assert result.assignments[0].target == "r1"


# --- aggregates and exclusions ---------------------------------------------------------


def test_aggregate_limits_the_targets() -> None:
    hosts = [host("f1"), host("big", memory_mib=65536), host("gpu1", aggregates=frozenset({"gpu"}))]
    result = plan(["f1"], [vm("a", aggregate="gpu"), vm("b", aggregate="gpu"), vm("c")], hosts)
    assert targets(result) == {"a": "gpu1", "b": "gpu1", "c": "big"}
    assert "in aggregate gpu" in result.assignments[0].reason


def test_no_host_in_the_aggregate_gives_no_capacity_with_reason() -> None:
    result = plan(["f1"], [vm("a", aggregate="gpu")], [host("f1"), host("h1")])
    assert result.assignments[0].status is NO_CAPACITY
    assert "not in aggregate gpu: h1" in result.assignments[0].reason


def test_hosts_that_already_failed_an_instance_are_skipped() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2")]
    result = plan(["f1"], [vm("a")], hosts, policy=Policy(exclude={"a": frozenset({"h1"})}))
    assert result.assignments[0].target == "h2"
    assert "avoiding h1 (failed it before)" in result.assignments[0].reason

    result = plan(["f1"], [vm("a")], hosts, policy=Policy(exclude={"a": frozenset({"h1", "h2"})}))
    assert result.assignments[0].status is NO_CAPACITY
    assert "already failed this instance: h1, h2" in result.assignments[0].reason


# --- server groups ---------------------------------------------------------------------


def test_anti_affinity_is_never_broken() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2"), host("h3")]
    instances = [vm("a"), vm("b"), vm("c"), vm("live", host="h3", flavor=SMALL)]
    web = ServerGroup("web", GroupPolicy.ANTI_AFFINITY, frozenset({"a", "b", "c", "live"}))
    result = by_uuid(plan(["f1"], instances, hosts, [web]))
    assert {result["a"].target, result["b"].target} == {"h1", "h2"}
    assert result["c"].status is NO_CAPACITY
    assert "holds a member of anti-affinity group web: h1, h2, h3" in result["c"].reason
    assert result["a"].reason.endswith("anti-affinity group web respected")


def test_group_membership_also_comes_from_the_instance() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2")]
    web = ServerGroup("web", GroupPolicy.ANTI_AFFINITY, frozenset())
    result = by_uuid(plan(["f1"], [vm("a", group="web"), vm("b", group="web")], hosts, [web]))
    assert {result["a"].target, result["b"].target} == {"h1", "h2"}


def test_soft_anti_affinity_is_kept_while_possible_then_broken_with_a_reason() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2")]
    web = ServerGroup("web", GroupPolicy.SOFT_ANTI_AFFINITY, frozenset({"a", "b", "c"}))
    result = by_uuid(plan(["f1"], [vm("a"), vm("b"), vm("c")], hosts, [web]))
    assert {result["a"].target, result["b"].target} == {"h1", "h2"}
    assert "soft-anti-affinity group web respected" in result["a"].reason
    assert result["c"].target == "h1"
    assert "soft-anti-affinity group web broken: no host without a member had room" in result["c"].reason


def test_affinity_joins_members_on_a_healthy_host() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2")]
    db = ServerGroup("db", GroupPolicy.AFFINITY, frozenset({"a", "live"}))
    result = plan(["f1"], [vm("a"), vm("live", host="h2")], hosts, [db])
    assert result.assignments[0].target == "h2"
    assert result.assignments[0].reason.startswith("h2: affinity group db runs there")


def test_affinity_refuses_rather_than_split_when_the_members_host_is_full() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("h2", memory_mib=4096, used=Flavor(0, 2048, 0))]
    db = ServerGroup("db", GroupPolicy.AFFINITY, frozenset({"a", "live"}))
    (only,) = plan(["f1"], [vm("a"), vm("live", host="h2")], hosts, [db]).assignments
    assert only.status is NO_CAPACITY
    assert only.reason == (
        "affinity group db runs on h2, which cannot take 2 vCPU / 4096 MiB RAM / 20 GiB disk: short of RAM: h2"
    )


def test_affinity_members_of_a_failed_host_go_together_to_a_host_that_fits_all() -> None:
    # h1 has the most free RAM but cannot hold all three; h2 can.
    hosts = [host("f1"), host("h1", memory_mib=10240), host("h2", memory_mib=12288, used=Flavor(0, 0, 0))]
    hosts[1] = host("h1", memory_mib=14336, vcpus=1, cpu_ratio=4.0)
    db = ServerGroup("db", GroupPolicy.AFFINITY, frozenset({"a", "b", "c"}))
    result = plan(["f1"], [vm("a"), vm("b"), vm("c")], hosts, [db])
    assert [a.target for a in result.assignments] == ["h2", "h2", "h2"]
    assert "affinity group db: host chosen to fit all 3 members" in result.assignments[0].reason
    assert "affinity group db kept together" in result.assignments[1].reason


def test_affinity_on_a_down_host_pulls_nothing() -> None:
    hosts = [host("f1"), host("h1"), host("d1", up=False)]
    db = ServerGroup("db", GroupPolicy.AFFINITY, frozenset({"a", "live"}))
    result = plan(["f1"], [vm("a"), vm("live", host="d1")], hosts, [db])
    assert result.assignments[0].target == "h1"


def test_duplicate_hosts_instances_and_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="host 'h1' is listed twice"):
        plan(["f1"], [], [host("h1"), host("h1")])
    with pytest.raises(ValueError, match="instance 'a' is listed twice"):
        plan(["f1"], [vm("a"), vm("a")], [host("h1")])
    group = ServerGroup("g", GroupPolicy.AFFINITY, frozenset())
    with pytest.raises(ValueError, match="server group 'g' is listed twice"):
        plan(["f1"], [], [host("h1")], [group, group])


def test_bad_flavors_and_ratios_are_refused_quoting_the_value() -> None:
    with pytest.raises(ValueError, match="-1 vCPU"):
        Flavor(-1, 0, 0)
    with pytest.raises(ValueError, match="host 'h1': ram_ratio 0"):
        host("h1", ram_ratio=0)
