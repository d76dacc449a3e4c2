"""Isolation (DESIGN §4): an executor that cannot reach the broker for
`isolation_timeout` is cut off from the detector. It applies its isolation response to
the HA domains it runs, then stops renewing its storage heartbeat, so that the detector
can tell, once that heartbeat has expired, that the host has fenced itself.

- Bus heartbeats have a path of their own: a dedicated producer (never queued behind
  rebuild results or inventory reports) whose sends are fire-and-forget with a bounded
  wait; an acknowledgement from the broker, whenever it comes, is what proves the bus is
  reachable.
- HA domains are the domains whose disks are on shared storage: the only ones the
  planner may rebuild elsewhere, so the only ones that could ever run twice.
- `power-off` destroys them at once; `shutdown` asks the guests to shut down and
  destroys what still runs after `isolation_shutdown_timeout`; `none` leaves them
  running. The storage heartbeat stops only once the response is complete: until then
  the detector sees the host isolated, never self-fenced, whatever the response takes.
- Leases: a stopped domain's lease is no longer renewed (it no longer runs). With `none`
  the domains keep running and so do their leases: a lease is the claim of a running VM,
  and it is what makes a rebuild elsewhere refuse to start a second copy.
- When the bus comes back the executor resumes its heartbeats; it never restarts the
  domains its response stopped (they may run elsewhere by now).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import libvirt
from aiokafka import AIOKafkaProducer

from services.common.domain_xml import parse_domain
from services.common.errors import RebuildError
from services.common.schemas import HostHeartbeat, encode, wrap
from services.executor.hypervisor import Hypervisor

log = logging.getLogger("services.executor")

Response = Literal["none", "shutdown", "power-off"]


class HeartbeatSender:
    """The bus heartbeat's own producer. `send` never waits longer than `timeout`; the
    broker's acknowledgement, when it comes, calls `on_ack`."""

    def __init__(self, bootstrap: str, source: str, request_timeout: float) -> None:
        self.source = source
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=0, enable_idempotence=False,
            request_timeout_ms=int(request_timeout * 1000), retry_backoff_ms=100,
        )
        self.last_ack = time.monotonic()

    async def start(self) -> None:
        await self._producer.start()
        self.last_ack = time.monotonic()

    async def stop(self) -> None:
        await self._producer.stop()

    def _acked(self, fut: asyncio.Future[object]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.last_ack = time.monotonic()

    async def send(self, hb: HostHeartbeat, timeout: float) -> bool:
        """Queue one heartbeat; False if even queuing it took longer than `timeout`
        (no metadata: the broker is unreachable)."""
        value = encode(wrap(hb, self.source))
        try:
            fut = await asyncio.wait_for(self._producer.send(str(HostHeartbeat.TOPIC), value, key=hb.key().encode()),
                                         timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is a missed heartbeat
            log.debug("heartbeat not sent: %r", exc)
            return False
        fut.add_done_callback(self._acked)
        return True


def ha_domains(hv: Hypervisor) -> list[libvirt.virDomain]:
    """The running domains whose disks are on shared storage."""
    out = []
    for dom in hv.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            facts = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), hv.shared_storage)
        except (libvirt.libvirtError, RebuildError):
            continue
        if facts.evacuable:
            out.append(dom)
    return out


def _destroy(dom: libvirt.virDomain, why: str) -> None:
    try:
        if dom.isActive():
            dom.destroy()
            log.warning("isolation: destroyed %s %s (%s)", dom.UUIDString(), dom.name(), why)
    except libvirt.libvirtError as exc:
        log.error("isolation: could not destroy %s %s: %s", dom.UUIDString(), dom.name(), exc)


def apply_response(hv: Hypervisor, response: Response, shutdown_timeout: float) -> list[str]:
    """Carry out the isolation response (blocking). Returns the UUIDs stopped."""
    if response == "none":
        return []
    doms = ha_domains(hv)
    if response == "shutdown":
        for dom in doms:
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                log.warning("isolation: shutdown of %s failed (%s); destroying it", dom.name(), exc)
                _destroy(dom, "shutdown refused")
        deadline = time.monotonic() + shutdown_timeout
        while time.monotonic() < deadline and any(_active(d) for d in doms):
            time.sleep(0.2)
        for dom in doms:
            if _active(dom):
                _destroy(dom, f"still running {shutdown_timeout:g} s after shutdown")
            else:
                log.warning("isolation: shut down %s %s", dom.UUIDString(), dom.name())
    else:
        for dom in doms:
            _destroy(dom, "isolation response power-off")
    return [d.UUIDString() for d in doms]


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False
