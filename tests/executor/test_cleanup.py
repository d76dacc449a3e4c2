"""Cleanup of a returned host's stale copies: domains gone, every disk file intact."""

from __future__ import annotations

import base64

from services.common.schemas import PowerState
from services.executor.rebuild import rebuild

from .conftest import TARGET, Site


def test_destroy_and_undefine_leaves_no_stale_domain_and_every_disk_intact(site: Site) -> None:
    vms = [site.vm(i, running=i % 3 != 2) for i in range(6)]
    stale = site.source(vms)  # the host that came back, its copies as they were
    stale.conn.lookupByUUIDString(vms[1].uuid).suspend()
    cd = base64.b64encode(b"config drive").decode()
    target = site.target()
    rebuild(target, site.leases(), site.order(vms[0], site.xml(vms[0]), config_drive_b64=cd), TARGET, site.root / "cd")
    files = {p: p.read_bytes() for p in site.root.rglob("*") if p.is_file() and ".lease" not in p.name}
    assert len([p for p in files if p.suffix == ".qcow2"]) == len(vms)

    destroyed = [vm.uuid for vm in vms if stale.destroy_and_undefine(vm.uuid)]

    assert destroyed == [vm.uuid for vm in vms]
    assert stale.conn.listAllDomains() == [] and all(stale.lookup(vm.uuid) is None for vm in vms)
    assert {p: p.read_bytes() for p in files} == files  # nothing on shared storage touched
    assert not stale.destroy_and_undefine(vms[0].uuid)  # absent: reported as nothing to do
    assert target.power_state(target.conn.lookupByUUIDString(vms[0].uuid)) == PowerState.RUNNING
