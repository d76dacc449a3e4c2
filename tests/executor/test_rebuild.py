"""rebuild() on libvirt's test driver: identity and power state survive, autostart is off,
and every refusal names its step and the bad value."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from services.common.domain_xml import METADATA_NS
from services.common.errors import RebuildError
from services.common.schemas import DomainInfo, PowerState
from services.executor.hypervisor import Hypervisor
from services.executor.rebuild import rebuild

from .conftest import TARGET, Site


def _info(hv: Hypervisor, uuid: str) -> DomainInfo:
    [info] = [d for d in hv.inventory() if d.uuid == uuid]
    return info


def _metadata(xml: str) -> str:
    meta = ET.fromstring(xml).find("metadata")
    assert meta is not None
    return "".join(ET.tostring(child, encoding="unicode") for child in meta)


def _refused(site: Site, hv: Hypervisor, order_xml_or_order: object) -> RebuildError:
    with pytest.raises(RebuildError) as info:
        rebuild(hv, site.leases(), order_xml_or_order, TARGET, site.root / "cd")  # type: ignore[arg-type]
    err = info.value
    steps = err.steps.done  # type: ignore[attr-defined]
    assert steps and not steps[-1].ok and steps[-1].name == err.step, steps
    return err


@pytest.mark.parametrize("state", [PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTOFF])
def test_identity_and_power_state_survive(site: Site, state: PowerState) -> None:
    vm = site.vm(0, running=state != PowerState.SHUTOFF)
    source = site.source([vm])
    if state == PowerState.PAUSED:
        source.conn.lookupByUUIDString(vm.uuid).suspend()
    before = _info(source, vm.uuid)
    assert before.power_state == state
    target = site.target()

    steps, got = rebuild(target, site.leases(), site.order(vm, before.xml, state), TARGET, site.root / "cd")

    after = _info(target, vm.uuid)
    assert got == after.power_state == state
    assert (after.uuid, after.name, after.nics, after.disks) == (before.uuid, before.name, before.nics, before.disks)
    assert after.nics[0].mac == vm.mac and after.nics[0].ip == vm.ip  # the IP travels in the metadata
    assert _metadata(after.xml) == _metadata(before.xml) and METADATA_NS in _metadata(after.xml)
    assert (after.vcpus, after.memory_mib) == (before.vcpus, before.memory_mib)
    dom = target.conn.lookupByUUIDString(vm.uuid)
    assert dom.autostart() == 0
    assert bool(dom.isActive()) == (state != PowerState.SHUTOFF)  # powered off: defined, not started
    names = [s.name for s in steps.done]
    if state == PowerState.SHUTOFF:
        assert names == ["validate", "define", "verify"]
        assert site.leases().read(vm.uuid) is None  # nothing runs, nothing to guard
    else:
        assert names == ["validate", "take-lease", "define", "start", "verify"]
        assert site.leases().read(vm.uuid)[0] == TARGET  # type: ignore[index]
    assert all(s.ok and s.seconds >= 0 for s in steps.done)


def test_autostart_is_turned_off_on_a_domain_defined_before(site: Site) -> None:
    vm = site.vm(0)
    xml = site.xml(vm)
    target = site.target()
    target.conn.defineXML(xml).setAutostart(1)
    steps, _ = rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    assert target.conn.lookupByUUIDString(vm.uuid).autostart() == 0
    assert "redelivered" in steps.done[2].detail


def test_redelivered_order_is_success_and_no_second_domain(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    o = site.order(vm, site.xml(vm))
    rebuild(target, site.leases(), o, TARGET, site.root / "cd")
    steps, state = rebuild(target, site.leases(), o, TARGET, site.root / "cd")
    assert state == PowerState.RUNNING
    assert [s.detail for s in steps.done if s.name == "define"] == ["already defined (redelivered order)"]
    assert len(site.domains_named(target, vm.name)) == 1 and len(target.conn.listAllDomains()) == 1


def test_same_uuid_with_another_identity_is_refused(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    impostor = site.xml(vm).replace(vm.name, "someone-else").replace(vm.mac, "52:54:00:ff:ff:ff")
    target.conn.defineXML(impostor)
    err = _refused(site, target, site.order(vm, site.xml(vm)))
    assert err.step == "define" and vm.uuid in err.message and "different domain" in err.message
    [dom] = target.conn.listAllDomains()
    assert dom.name() == "someone-else" and not dom.isActive()
    assert site.leases().read(vm.uuid) is None  # the lease this failed rebuild took is given back


def test_not_shared_storage_is_refused_naming_the_disk(site: Site) -> None:
    vm = site.vm(0, shared=False)
    target = site.target()
    err = _refused(site, target, site.order(vm, site.xml(vm)))
    assert err.step == "validate"
    assert "disk vda" in err.message and str(site.local / f"{vm.name}.qcow2") in err.message
    assert "not on shared storage" in err.message and target.conn.listAllDomains() == []


def test_malformed_xml_fails_validate(site: Site) -> None:
    vm = site.vm(0)
    err = _refused(site, site.target(), site.order(vm, "<domain><name>broken</name"))
    assert str(err).startswith("validate: malformed domain XML")


def test_order_for_another_host_fails_validate(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    err = _refused(site, target, site.order(vm, site.xml(vm), target="h7"))
    assert err.step == "validate" and "'h7'" in err.message and f"'{TARGET}'" in err.message
    assert target.conn.listAllDomains() == []


def test_missing_disk_fails_validate_naming_the_path(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    err = _refused(site, target, site.order(vm, site.xml(vm, create_disk=False)))
    path = site.shared / f"{vm.name}.qcow2"
    assert err.step == "validate" and f"disk vda missing: {path} does not exist" in err.message
    assert target.conn.listAllDomains() == []


def test_uuid_of_xml_must_match_the_order(site: Site) -> None:
    vm, other = site.vm(0), site.vm(1)
    err = _refused(site, site.target(), site.order(vm, site.xml(other)))
    assert err.step == "validate" and other.uuid in err.message


def test_bad_config_drive_is_a_failed_step_not_a_crash(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    err = _refused(site, target, site.order(vm, site.xml(vm), config_drive_b64="!!!not-base64"))
    assert err.step == "attach-config-drive"
    assert not target.conn.lookupByUUIDString(vm.uuid).isActive()
    assert site.leases().read(vm.uuid) is None


def test_config_drive_is_attached_and_identity_kept(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    iso = b"CD001 pretend iso"
    o = site.order(vm, site.xml(vm), config_drive_b64=base64.b64encode(iso).decode())
    steps, state = rebuild(target, site.leases(), o, TARGET, site.root / "cd")
    assert state == PowerState.RUNNING and "attach-config-drive" in [s.name for s in steps.done]
    xml = target.conn.lookupByUUIDString(vm.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert (site.root / "cd" / f"{vm.uuid}.iso").read_bytes() == iso
    assert f"{site.root / 'cd' / vm.uuid}.iso" in xml and vm.mac in xml and vm.name in xml
    assert _info(target, vm.uuid).disks == _info(site.source([vm]), vm.uuid).disks


def test_misrouted_order_does_not_release_the_lease_of_a_vm_running_here(site: Site) -> None:
    vm = site.vm(0)
    target = site.target()
    rebuild(target, site.leases(), site.order(vm, site.xml(vm)), TARGET, site.root / "cd")
    _refused(site, target, site.order(vm, site.xml(vm), target="h7"))
    _refused(site, target, site.order(vm, "<nope"))
    assert site.leases().read(vm.uuid)[0] == TARGET  # type: ignore[index]


def test_network_disk_keeps_the_domain_name(site: Site) -> None:
    vm = site.vm(0)
    xml = site.xml(vm).replace(
        "</devices>",
        "<disk type='network' device='disk'><source protocol='rbd' name='pool/image'/><target dev='vdb'/></disk>"
        "</devices>")
    target = site.target()
    rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    info = _info(target, vm.uuid)
    assert info.name == vm.name and [d.path for d in info.disks][1] == "rbd:pool/image"


def test_staged_config_drive_is_checked_by_its_sha256(site: Site) -> None:
    """A drive too large for the bus waits on the shared storage; the order names its
    sha256, and a file that does not match is refused before anything starts."""
    vm = site.vm(0)
    staged = site.shared / ".evacuate" / "config-drives" / "staged" / "o.iso"
    staged.parent.mkdir(parents=True, exist_ok=True)
    iso = b"CD001 a big pretend iso" * 1000
    staged.write_bytes(iso)
    target = site.target()
    good = site.order(vm, site.xml(vm), config_drive_path=str(staged),
                      config_drive_sha256=hashlib.sha256(iso).hexdigest())
    steps, state = rebuild(target, site.leases(), good, TARGET, site.root / "cd")
    assert state == PowerState.RUNNING and (site.root / "cd" / f"{vm.uuid}.iso").read_bytes() == iso

    other = site.vm(1)
    bad = site.order(other, site.xml(other), config_drive_path=str(staged), config_drive_sha256="0" * 64)
    err = _refused(site, target, bad)
    assert err.step == "attach-config-drive" and "sha256" in err.message
    assert not target.conn.lookupByUUIDString(other.uuid).isActive()
    outside = site.order(other, site.xml(other), config_drive_path="/etc/hostname", config_drive_sha256="0" * 64)
    assert "not on the shared storage" in _refused(site, target, outside).message
