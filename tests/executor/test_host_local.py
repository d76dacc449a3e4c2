"""What a host rewrites in an order's domain XML before defining it: its own QEMU binary
(EVACUATE_EMULATOR) and its own copy of the config drive. Nothing else changes, and a
host file the domain needs but this host lacks is refused at validate, naming it."""

from __future__ import annotations

import difflib
import shutil

import libvirt
import pytest

from services.common.domain_xml import boot_files, config_drive_of, emulator_of, with_config_drive, with_emulator
from services.common.errors import RebuildError
from services.executor.rebuild import rebuild

from .conftest import TARGET, Site

# As libvirt writes a QEMU domain, with what a rewrite could trip over: a comment naming
# another emulator, a namespaced <emulator> in the metadata, entities, both quote styles.
QEMU_XML = """<domain type='kvm' xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>web&amp;1</name>
  <uuid>6f1c1c4e-9d59-4a3e-a0a4-1b4b8d7e2f10</uuid>
  <metadata>
    <ev:nics xmlns:ev='urn:evacuate:1'><ev:nic mac='52:54:00:12:34:56' ip='10.0.0.5'/></ev:nics>
    <x:tool xmlns:x="urn:example"><emulator>/opt/not/this/one</emulator></x:tool>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <!-- was <emulator>/usr/bin/qemu-system-x86_64</emulator> before the upgrade -->
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/evacuate/shared/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def _changed_lines(a: str, b: str) -> list[str]:
    return [d for d in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
            if d[:1] in "+-" and not d.startswith(("+++", "---"))]


def test_emulator_rewrite_changes_that_text_and_no_other_byte() -> None:
    out = with_emulator(QEMU_XML, "/usr/libexec/qemu-kvm")
    assert emulator_of(out) == "/usr/libexec/qemu-kvm"
    assert _changed_lines(QEMU_XML, out) == ["-    <emulator>/usr/bin/qemu-system-x86_64</emulator>",
                                             "+    <emulator>/usr/libexec/qemu-kvm</emulator>"]
    # Byte for byte: putting the old path back gives the very same document.
    assert with_emulator(out, "/usr/bin/qemu-system-x86_64") == QEMU_XML


def test_emulator_path_is_escaped() -> None:
    out = with_emulator(QEMU_XML, "/opt/q&a/<qemu>")
    assert "<emulator>/opt/q&amp;a/&lt;qemu&gt;</emulator>" in out and emulator_of(out) == "/opt/q&a/<qemu>"


def test_a_domain_without_emulator_has_none_to_rewrite() -> None:
    bare = QEMU_XML.replace("    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n", "")
    assert emulator_of(bare) is None
    with pytest.raises(RebuildError, match="no <devices><emulator>"):
        with_emulator(bare, "/usr/libexec/qemu-kvm")


def test_boot_files_and_config_drive_are_read() -> None:
    booted = QEMU_XML.replace("<boot dev='hd'/>", "<kernel>/k/vmlinuz</kernel><initrd>/k/initrd</initrd>")
    assert boot_files(booted) == [("kernel", "/k/vmlinuz"), ("initrd", "/k/initrd")]
    assert boot_files(QEMU_XML) == [] and config_drive_of(QEMU_XML) is None
    assert config_drive_of(with_config_drive(QEMU_XML, "/s/cd.iso")) == "/s/cd.iso"


def _qemu_like(site: Site, emulator: str, i: int = 0) -> tuple[object, str]:
    """A test-driver domain that names an emulator (the test driver keeps it, runs nothing)."""
    vm = site.vm(i)
    xml = site.xml(vm).replace("<devices>", f"<devices>\n    <emulator>{emulator}</emulator>", 1)
    return vm, xml


def test_rebuild_defines_this_hosts_emulator_and_keeps_the_rest(site: Site) -> None:
    here = shutil.which("true") or "/bin/true"
    vm, xml = _qemu_like(site, "/usr/libexec/qemu-kvm-of-another-distro")
    target = site.target()
    target.emulator = here
    steps, _ = rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    assert steps.done[0].detail == f"emulator /usr/libexec/qemu-kvm-of-another-distro -> {here}"
    got = target.conn.lookupByUUIDString(vm.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # The same XML defined unchanged on another hypervisor differs in that one line only.
    reference = site.target("reference").conn.defineXML(xml).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert _changed_lines(reference, got) == ["-    <emulator>/usr/libexec/qemu-kvm-of-another-distro</emulator>",
                                              f"+    <emulator>{here}</emulator>"]


def test_order_emulator_missing_here_without_setting_is_refused(site: Site) -> None:
    vm, xml = _qemu_like(site, "/nonexistent/qemu-kvm")
    target = site.target()
    with pytest.raises(RebuildError) as info:
        rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    err = info.value
    assert err.step == "validate" and "/nonexistent/qemu-kvm from the order does not exist on h2" in err.message
    assert "EVACUATE_EMULATOR" in err.message
    assert target.conn.listAllDomains() == [] and site.leases().read(vm.uuid) is None


def test_order_emulator_present_here_is_kept(site: Site) -> None:
    here = shutil.which("true") or "/bin/true"
    vm, xml = _qemu_like(site, here)
    target = site.target()
    steps, _ = rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    assert steps.done[0].detail == ""
    assert emulator_of(target.conn.lookupByUUIDString(vm.uuid).XMLDesc(0)) == here


def test_configured_emulator_missing_is_refused_naming_the_setting(site: Site) -> None:
    vm, xml = _qemu_like(site, shutil.which("true") or "/bin/true")
    target = site.target()
    target.emulator = str(site.root / "no-qemu-here")
    with pytest.raises(RebuildError) as info:
        rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    assert info.value.step == "validate"
    assert info.value.message == f"emulator {site.root / 'no-qemu-here'} (EVACUATE_EMULATOR) does not exist on h2"


def test_missing_kernel_is_refused_naming_it(site: Site) -> None:
    vm = site.vm(0)
    xml = site.xml(vm).replace("<os><type>hvm</type>", f"<os><type>hvm</type><kernel>{site.root}/vmlinuz</kernel>")
    with pytest.raises(RebuildError) as info:
        rebuild(site.target(), site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    assert info.value.message == f"<kernel> {site.root}/vmlinuz does not exist on h2"


def test_config_drive_of_the_old_host_is_copied_into_this_hosts_folder(site: Site) -> None:
    vm = site.vm(0)
    old = site.shared / ".evacuate" / "config-drives" / "h1" / f"{vm.uuid}.iso"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"CD001 rendered on h1")
    xml = with_config_drive(site.xml(vm), str(old))
    target = site.target()
    steps, _ = rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")
    mine = site.root / "cd" / f"{vm.uuid}.iso"
    assert [s.name for s in steps.done] == ["validate", "take-lease", "define", "attach-config-drive", "start",
                                            "verify"]
    assert steps.done[0].detail == f"config drive {old} -> {site.root / 'cd'}"
    assert steps.done[3].detail.endswith(f"copied from {old}")
    assert mine.read_bytes() == old.read_bytes()
    assert config_drive_of(target.conn.lookupByUUIDString(vm.uuid).XMLDesc(0)) == str(mine)

    again, _ = rebuild(target, site.leases(), site.order(vm, xml), TARGET, site.root / "cd")  # redelivered
    assert config_drive_of(target.conn.lookupByUUIDString(vm.uuid).XMLDesc(0)) == str(mine)
    assert "already defined" in again.done[2].detail


def test_config_drive_missing_and_none_in_the_order_is_refused(site: Site) -> None:
    vm = site.vm(0)
    gone = site.shared / ".evacuate" / "config-drives" / "h1" / f"{vm.uuid}.iso"
    target = site.target()
    with pytest.raises(RebuildError) as info:
        rebuild(target, site.leases(), site.order(vm, with_config_drive(site.xml(vm), str(gone))), TARGET,
                site.root / "cd")
    assert info.value.step == "validate"
    assert info.value.message == f"config drive {gone} does not exist on h2 and the order carries no new one"
    assert target.conn.listAllDomains() == []
