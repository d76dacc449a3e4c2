"""The one interface to libvirt on a compute host. Blocking calls; the service runs
them in worker threads. Lifecycle events come from libvirt's own event loop."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import libvirt

from services.common.domain_xml import DomainFacts, parse_domain
from services.common.errors import RebuildError
from services.common.schemas import DomainInfo, PowerState

log = logging.getLogger(__name__)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
}

_event_loop_started = False


def _start_event_loop() -> None:
    global _event_loop_started
    if _event_loop_started:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _event_loop_started = True


class Hypervisor:
    def __init__(self, uri: str, shared_storage: str, emulator: str = "") -> None:
        _start_event_loop()
        libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise RebuildError("connect", f"cannot open libvirt {uri}: {exc}") from None
        self.uri = uri
        self.shared_storage = shared_storage
        self.emulator = emulator  # this host's QEMU binary for domains defined from orders; "": the order's
        # parse_domain by inactive XML: a burst of lifecycle events re-reads every domain, but
        # only a domain whose definition changed is parsed again.
        self._facts: dict[str, DomainFacts] = {}
        self._probe(emulator)

    def _probe(self, emulator: str) -> None:
        """Have libvirt probe the QEMU binary now (seconds, on a driver's first use of a
        binary) rather than during the first evacuation; say at start when it is unusable."""
        if emulator and not os.access(emulator, os.X_OK):
            log.error("EVACUATE_EMULATOR %s is not an executable on this host: every rebuild here will fail", emulator)
            return
        try:
            self.conn.getDomainCapabilities(emulator or None, None, None, None, 0)
        except libvirt.libvirtError as exc:  # drivers without domain capabilities (test): nothing to warm
            log.debug("domain capabilities of %s: %s", emulator, exc)

    def on_lifecycle(self, callback: Callable[[], None]) -> None:
        self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *_: callback(), None
        )

    def capacity(self) -> tuple[int, int]:
        info = self.conn.getInfo()
        return int(info[2]), int(info[1])  # vcpus, memory MiB

    def power_state(self, dom: libvirt.virDomain) -> PowerState:
        return _STATES.get(dom.state()[0], PowerState.OTHER)

    def inventory(self) -> list[DomainInfo]:
        out = []
        facts_by_xml: dict[str, DomainFacts] = {}
        for dom in sorted(self.conn.listAllDomains(), key=lambda d: d.name()):
            try:
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                facts = self._facts.get(xml) or parse_domain(xml, self.shared_storage)
                facts_by_xml[xml] = facts
                state = self.power_state(dom)
            except (libvirt.libvirtError, RebuildError) as exc:  # vanished meanwhile
                log.debug("inventory skipped a domain: %s", exc)
                continue
            out.append(DomainInfo(
                uuid=facts.uuid, name=facts.name, power_state=state, vcpus=facts.vcpus,
                memory_mib=facts.memory_mib, disks=facts.disks, nics=facts.nics,
                evacuable=facts.evacuable, not_evacuable_reason=facts.not_evacuable_reason, xml=xml,
            ))
        self._facts = facts_by_xml
        return out

    def lookup(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return None

    def define(self, xml: str) -> libvirt.virDomain:
        try:
            dom = self.conn.defineXML(xml)
            dom.setAutostart(0)  # HA-managed: only an order starts it
            return dom
        except libvirt.libvirtError as exc:
            raise RebuildError("define", str(exc)) from None

    def start(self, dom: libvirt.virDomain, paused: bool = False) -> None:
        try:
            if dom.isActive():
                return
            if not paused:
                dom.createWithFlags(0)
                return
            try:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as exc:
                # Drivers without START_PAUSED (the test driver): start, then pause at once.
                if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG or "flags" not in str(exc):
                    raise
                dom.createWithFlags(0)
                dom.suspend()
        except libvirt.libvirtError as exc:
            raise RebuildError("start", str(exc)) from None

    def is_active(self, uuid: str) -> bool:
        dom = self.lookup(uuid)
        try:
            return bool(dom is not None and dom.isActive())
        except libvirt.libvirtError:
            return False

    def destroy_and_undefine(self, uuid: str) -> bool:
        """Stop and forget a domain; never touches its disk files. False if absent."""
        dom = self.lookup(uuid)
        if dom is None:
            return False
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            log.warning("destroy %s: %s", uuid, exc)
        try:
            dom.undefine()
        except libvirt.libvirtError as exc:
            raise RebuildError("cleanup", f"undefine {uuid}: {exc}") from None
        return True

    def running_uuids(self) -> list[str]:
        return [d.UUIDString() for d in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
