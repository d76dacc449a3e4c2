"""The invariant checker itself: it must catch what it is there to catch."""

from __future__ import annotations

from services.common.schemas import DomainInfo, InstanceReport, PowerState
from services.evacctl.invariants import InvariantChecker
from services.evacctl.observe import ClusterView
from services.evacctl.simcluster import plan_vms


def report(host: str, *doms: tuple[str, PowerState]) -> InstanceReport:
    return InstanceReport(host=host, vcpus=8, memory_mib=8192, domains=tuple(
        DomainInfo(uuid=u, name=u[-4:], power_state=p, vcpus=1, memory_mib=512, evacuable=True, xml="<domain/>")
        for u, p in doms))


def view_of(*reports: InstanceReport) -> ClusterView:
    v = ClusterView.__new__(ClusterView)
    v.reports = {r.host: r for r in reports}
    v.report_time = {}
    return v


def test_catches_a_vm_running_on_two_hosts_and_a_started_powered_off_vm() -> None:
    vms = plan_vms(1, "a", 4, shutoff=1, local=0)
    by_uuid = {vm.uuid: vm for vm in vms}
    running, off = vms[0], vms[3]
    assert running.running and not off.running
    checker = InvariantChecker(by_uuid)
    checker.sample(view_of(report("a", (running.uuid, PowerState.RUNNING)),
                           report("b", (running.uuid, PowerState.RUNNING), (off.uuid, PowerState.RUNNING))))
    text = " | ".join(checker.violations.items)
    assert f"{running.name} runs on 2 hosts at once: a, b" in text
    assert f"{off.name} was powered off but runs on b" in text
    assert checker.double_runs == {running.uuid}


def test_a_dead_hosts_last_report_does_not_count_and_stale_starts_are_caught() -> None:
    vms = plan_vms(1, "a", 2, shutoff=0, local=0)
    checker = InvariantChecker({vm.uuid: vm for vm in vms}, dead={"a"})
    checker.sample(view_of(report("a", (vms[0].uuid, PowerState.RUNNING)),
                           report("b", (vms[0].uuid, PowerState.RUNNING))))
    assert not checker.violations
    checker.returned.add("a")
    checker.dead.discard("a")
    checker.sample(view_of(report("a", (vms[0].uuid, PowerState.RUNNING)),
                           report("b", (vms[0].uuid, PowerState.RUNNING))))
    assert any("stale copy" in v for v in checker.violations.items)
