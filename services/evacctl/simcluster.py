"""Simulated compute hosts on libvirt's test driver: one node XML per host, with
domains whose disks are files on the shared storage directory (one VM per host on a
host-local disk, which is not evacuable)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from services.common.domain_xml import METADATA_NS


@dataclass(frozen=True)
class SimVM:
    uuid: str
    name: str
    host: str
    mac: str
    ip: str
    running: bool
    shared: bool
    memory_mib: int = 1024
    vcpus: int = 1


def plan_vms(host_index: int, host: str, count: int, shutoff: int = 2, local: int = 1) -> list[SimVM]:
    vms = []
    for i in range(count):
        n = host_index * 1000 + i
        vms.append(SimVM(
            uuid=str(uuid.UUID(int=(0xE7AC << 112) + n)), name=f"{host}-vm{i:02d}", host=host,
            mac=f"52:54:00:{host_index:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            ip=f"10.{host_index}.{i // 250}.{i % 250 + 2}",
            running=i < count - shutoff - local or i >= count - local,
            shared=i < count - local,
        ))
    return vms


def domain_xml(vm: SimVM, shared_dir: Path, local_dir: Path) -> str:
    disk = (shared_dir if vm.shared else local_dir) / f"{vm.name}.qcow2"
    return f"""<domain type='test'>
  <name>{escape(vm.name)}</name>
  <uuid>{vm.uuid}</uuid>
  <metadata><ev:nics xmlns:ev='{METADATA_NS}'><ev:nic mac='{vm.mac}' ip='{vm.ip}'/></ev:nics></metadata>
  <memory unit='MiB'>{vm.memory_mib}</memory>
  <vcpu>{vm.vcpus}</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='{disk}'/><target dev='vda'/></disk>
    <interface type='network'><mac address='{vm.mac}'/><source network='default'/></interface>
  </devices>
</domain>"""


def write_node(path: Path, vms: list[SimVM], shared_dir: Path, local_dir: Path,
               cpus: int = 32, memory_mib: int = 65536) -> str:
    """Write the node XML and the VMs' (empty) disk files; returns the libvirt URI."""
    shared_dir.mkdir(parents=True, exist_ok=True)
    local_dir.mkdir(parents=True, exist_ok=True)
    domains = []
    for vm in vms:
        (shared_dir if vm.shared else local_dir).joinpath(f"{vm.name}.qcow2").touch()
        xml = domain_xml(vm, shared_dir, local_dir).replace(
            "<domain type='test'>",
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>", 1)
        if not vm.running:
            xml = xml.replace("</domain>", "  <test:runstate>5</test:runstate>\n</domain>")
        domains.append(xml)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes><sockets>1</sockets>
  <cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{memory_mib * 1024}</memory>
{chr(10).join(domains)}
</node>
""")
    return f"test://{path.resolve()}"
