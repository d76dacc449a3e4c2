"""An executor's world on libvirt's test driver: a shared-storage directory, a host-local
directory, a source host whose domains give the orders their XML (as the planner takes it
from the source's inventory), and target hosts that are fresh in-memory hypervisors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from services.common.schemas import PowerState, RebuildOrder
from services.evacctl.simcluster import SimVM, domain_xml, plan_vms, write_node
from services.executor.hypervisor import Hypervisor
from services.executor.leases import LeaseStore

TARGET = "h2"
LEASE_TIMEOUT = 2.5


@dataclass
class Site:
    root: Path

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def local(self) -> Path:
        return self.root / "local"

    def vm(self, i: int, *, shared: bool = True, running: bool = True, host_index: int = 1) -> SimVM:
        base = plan_vms(host_index, f"h{host_index}", i + 1, shutoff=0, local=0)[i]
        return SimVM(uuid=base.uuid, name=base.name, host=base.host, mac=base.mac, ip=base.ip,
                     running=running, shared=shared)

    def xml(self, vm: SimVM, *, create_disk: bool = True) -> str:
        disk = (self.shared if vm.shared else self.local) / f"{vm.name}.qcow2"
        if create_disk:
            disk.parent.mkdir(parents=True, exist_ok=True)
            disk.write_bytes(b"disk of " + vm.name.encode())
        return domain_xml(vm, self.shared, self.local)

    def source(self, vms: list[SimVM]) -> Hypervisor:
        """The failed host as it was: its domains in their power states."""
        uri = write_node(self.root / "source-node.xml", vms, self.shared, self.local)
        for vm in vms:
            disk = (self.shared if vm.shared else self.local) / f"{vm.name}.qcow2"
            disk.write_bytes(b"disk of " + vm.name.encode())
        return Hypervisor(uri, str(self.shared))

    def target(self, name: str = "target") -> Hypervisor:
        uri = write_node(self.root / f"{name}-node.xml", [], self.shared, self.local)
        return Hypervisor(uri, str(self.shared))

    def leases(self, host: str = TARGET, timeout: float = LEASE_TIMEOUT) -> LeaseStore:
        return LeaseStore(str(self.shared), host, timeout=timeout)

    @staticmethod
    def order(vm: SimVM, xml: str, power_state: PowerState = PowerState.RUNNING, target: str = TARGET,
              **extra: object) -> RebuildOrder:
        return RebuildOrder(
            order_id=str(uuid.uuid4()), evacuation_id="evac-1", item_id=f"item-{vm.name}", source=vm.host,
            target=target, instance_uuid=vm.uuid, instance_name=vm.name, attempt=1, xml=xml,
            power_state=power_state, **extra,  # type: ignore[arg-type]
        )

    @staticmethod
    def domains_named(hv: Hypervisor, name: str) -> list[libvirt.virDomain]:
        return [d for d in hv.conn.listAllDomains() if d.name() == name]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    s.shared.mkdir()
    s.local.mkdir()
    yield s
