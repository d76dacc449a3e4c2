"""The operator-chosen target of a manual evacuation (pure planner core)."""

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


def targets(result: Plan) -> dict[str, str | None]:
    return {a.instance_uuid: a.target for a in result.assignments}


def by_uuid(result: Plan) -> dict[str, Assignment]:
    return {a.instance_uuid: a for a in result.assignments}


# --- operator-chosen target ------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("nope", "is unknown"),
        ("f1", "is one of the failed hosts"),
        ("d1", "is not up"),
        ("x1", "is disabled"),
    ],
)
def test_an_invalid_target_refuses_the_plan(target: str, problem: str) -> None:
    hosts = [host("f1"), host("h1"), host("d1", up=False), host("x1", enabled=False)]
    result = plan(["f1"], [vm("a")], hosts, policy=Policy(target=target))
    assert result.assignments == ()
    assert result.refused == f"target host {target!r} {problem}; choose an up, enabled host that did not fail"


def test_a_target_without_room_for_all_instances_refuses_the_plan() -> None:
    result = plan(["f1"], [vm("a"), vm("b")], [host("f1"), host("h1", memory_mib=6144)], policy=Policy(target="h1"))
    assert result.assignments == ()
    assert result.refused == (
        "target host 'h1' cannot take the 2 instance(s) to evacuate: they need 4 vCPU / 8192 MiB RAM / 40 GiB disk, "
        "it has 32 vCPU / 6144 MiB RAM / 500 GiB disk free (short of RAM); "
        "choose a larger host or evacuate without a target"
    )


def test_a_valid_target_takes_every_instance_even_a_reserved_one() -> None:
    hosts = [host("f1"), host("h1", memory_mib=65536), host("r1", reserved=True)]
    result = plan(["f1"], [vm("a"), vm("b", ha=False)], hosts, policy=Policy(target="r1"))
    assert result.refused is None
    assert targets(result) == {"a": "r1", "b": None}
    assert result.reserved_taken == ("r1",)
    assert result.assignments[0].reason.startswith("r1: operator-chosen target (free 12288 MiB)")


def test_a_target_still_respects_anti_affinity() -> None:
    web = ServerGroup("web", GroupPolicy.ANTI_AFFINITY, frozenset({"a", "b"}))
    hosts = [host("f1"), host("h1", memory_mib=65536)]
    result = by_uuid(plan(["f1"], [vm("a"), vm("b")], hosts, [web], Policy(target="h1")))
    assert result["a"].target == "h1"
    assert result["b"].status is NO_CAPACITY
    assert result["b"].reason == (
        "target h1 cannot take 2 vCPU / 4096 MiB RAM / 20 GiB disk: holds a member of anti-affinity group web: h1"
    )


# --- input checks ----------------------------------------------------------------------
