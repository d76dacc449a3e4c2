"""Late hosts (services/planner/liveness.py): plain unit tests with the real placement core."""

from __future__ import annotations

from services.planner.liveness import HeardHosts, choose
from services.planner.placement import AssignmentStatus, plan

from .test_placement import MEDIUM, host, vm


def test_a_host_last_heard_one_and_a_half_intervals_before_the_newest_heartbeat_is_late() -> None:
    heard = HeardHosts()
    heard.note("h1", 100.0)
    heard.note("h2", 101.4)
    assert heard.late(interval=1.0) == frozenset()
    heard.note("h2", 101.9)
    assert heard.late(interval=1.0) == {"h1"}
    assert heard.late(interval=2.0) == frozenset()


def test_reading_nothing_new_makes_nobody_late() -> None:
    heard = HeardHosts()
    heard.note("h1", 100.0)
    heard.note("h2", 100.5)
    assert heard.late(interval=1.0) == frozenset()  # however long ago: the bus or this reader is away
    assert HeardHosts().late(interval=1.0) == frozenset()


def test_late_hosts_are_avoided_while_the_others_have_room() -> None:
    hosts = [host("f1"), host("h1"), host("h2", memory_mib=65536)]  # h2, the roomiest, is late
    vms = [vm("a"), vm("b")]
    result = choose(frozenset({"h2"}), hosts, lambda hs: plan(["f1"], vms, hs))
    assert {a.target for a in result.assignments} == {"h1"}
    assert {a.target for a in plan(["f1"], vms, hosts).assignments} == {"h2"}  # what it would have chosen


def test_late_hosts_are_used_when_the_others_cannot_take_everything() -> None:
    hosts = [host("f1"), host("h1", memory_mib=4096), host("h2")]  # h1 holds one MEDIUM VM only
    vms = [vm("a", flavor=MEDIUM), vm("b", flavor=MEDIUM)]
    result = choose(frozenset({"h2"}), hosts, lambda hs: plan(["f1"], vms, hs))
    assert all(a.status is AssignmentStatus.PLACED for a in result.assignments)
    assert "h2" in {a.target for a in result.assignments}


def test_an_operators_target_that_is_late_is_still_honoured() -> None:
    from services.planner.placement import Policy

    hosts = [host("f1"), host("h1"), host("h2")]
    result = choose(frozenset({"h2"}), hosts, lambda hs: plan(["f1"], [vm("a")], hs, policy=Policy(target="h2")))
    assert result.refused is None and result.assignments[0].target == "h2"
