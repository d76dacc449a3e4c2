"""A rebuild as named steps (validate → take lease → define → attach config drive →
start → verify), each timed and reported; on failure the lease is released.

The order's XML is the VM as its old host defined it. Before it is defined here, the
paths that name this host's own files are made this host's (``host_local``): the QEMU
binary (``<emulator>``, EVACUATE_EMULATOR) and the config drive (a copy in this host's
own config-drive folder). Everything else is defined exactly as it came."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

from libvirt import VIR_DOMAIN_XML_INACTIVE, libvirtError

from services.common.domain_xml import (
    boot_files,
    config_drive_of,
    emulator_of,
    is_shared,
    parse_domain,
    same_identity,
    with_config_drive,
    with_emulator,
)
from services.common.errors import RebuildError
from services.common.schemas import PowerState, RebuildOrder, Step
from services.executor.hypervisor import Hypervisor
from services.executor.leases import LeaseStore


class Steps:
    def __init__(self) -> None:
        self.done: list[Step] = []

    def ok(self, name: str, started: float, detail: str = "") -> None:
        self.done.append(Step(name=name, ok=True, seconds=round(time.perf_counter() - started, 6), detail=detail))

    def fail(self, name: str, started: float, detail: str) -> None:
        self.done.append(Step(name=name, ok=False, seconds=round(time.perf_counter() - started, 6), detail=detail))


def rebuild(hv: Hypervisor, leases: LeaseStore, order: RebuildOrder, host: str,
            config_drive_dir: Path) -> tuple[Steps, PowerState]:
    """Run the steps; raises RebuildError (with the steps so far in ``err.steps``)."""
    steps = Steps()
    took_lease = False
    step = "validate"
    t = time.perf_counter()
    try:
        if order.target != host:
            raise RebuildError(step, f"order is for host {order.target!r}, this is {host!r}")
        facts = parse_domain(order.xml, hv.shared_storage)
        if facts.uuid != order.instance_uuid.lower():
            raise RebuildError(step, f"XML uuid {facts.uuid} differs from the order's {order.instance_uuid}")
        if not facts.evacuable:
            raise RebuildError(step, facts.not_evacuable_reason or "not evacuable")
        for disk in facts.disks:
            if disk.path.startswith("/") and not Path(disk.path).exists():  # network disks: "proto:name"
                raise RebuildError(step, f"disk {disk.target} missing: {disk.path} does not exist on {host}")
        xml, rewritten = host_local(order, hv.emulator, host, config_drive_dir)
        steps.ok(step, t, "; ".join(rewritten))

        existing = hv.lookup(order.instance_uuid)
        want_running = order.power_state in (PowerState.RUNNING, PowerState.PAUSED)
        if want_running:
            step, t = "take-lease", time.perf_counter()
            held = leases.acquire(order.instance_uuid)
            if held is not None and held.holder == order.source and held.age < leases.timeout:
                # The failed host was proven off (fenced, or its leases expired) before this
                # order was made; its last renewal may still be younger than the lease
                # timeout. Wait the rest of it once: a lease renewed again meanwhile means
                # it runs after all, and is refused below.
                time.sleep(leases.timeout - held.age + 0.1)
                held = leases.acquire(order.instance_uuid)
            if held is not None:
                raise RebuildError(step, f"lease held by {held.holder} (renewed {held.age:.1f}s ago)")
            took_lease = True
            steps.ok(step, t)

        step, t = "define", time.perf_counter()
        if existing is not None:
            if not same_identity(existing.XMLDesc(VIR_DOMAIN_XML_INACTIVE), order.xml):
                raise RebuildError(step, f"a different domain with uuid {order.instance_uuid} exists here")
            dom = existing
            dom.setAutostart(0)  # HA-managed, whoever defined it before
            steps.ok(step, t, "already defined (redelivered order)")
        else:
            dom = hv.define(xml)
            steps.ok(step, t)

        kept_drive = config_drive_of(xml)
        path = config_drive_dir / f"{order.instance_uuid}.iso"
        if order.config_drive_b64 or order.config_drive_path or (kept_drive and Path(kept_drive) != path):
            step, t = "attach-config-drive", time.perf_counter()
            if order.config_drive_b64:
                iso, origin = base64.b64decode(order.config_drive_b64), "from the order"
            elif order.config_drive_path:
                iso, origin = staged_drive(order, hv), f"staged at {order.config_drive_path}"
            else:  # the drive the VM had on its old host: the same bytes, in this host's folder
                iso, origin = Path(kept_drive or "").read_bytes(), f"copied from {kept_drive}"
            config_drive_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(iso)
            dom = hv.define(with_config_drive(dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE), str(path)))
            steps.ok(step, t, f"{len(iso)} bytes sha256 {hashlib.sha256(iso).hexdigest()[:16]} {origin}")

        if want_running:
            step, t = "start", time.perf_counter()
            hv.start(dom, paused=order.power_state == PowerState.PAUSED)
            steps.ok(step, t)
        step, t = "verify", time.perf_counter()
        state = hv.power_state(dom)
        if want_running and state != order.power_state:
            raise RebuildError(step, f"domain is {state}, expected {order.power_state}")
        if not want_running and state not in (PowerState.SHUTOFF, PowerState.CRASHED):
            raise RebuildError(step, f"domain is {state}, expected shut off")
        steps.ok(step, t, str(state))
        return steps, state
    except (libvirtError, OSError, ValueError) as exc:  # ValueError: a bad config drive's base64
        err = RebuildError(step, f"{type(exc).__name__}: {exc}")
        _failed(hv, leases, order, steps, err, t, took_lease)
        raise err from exc
    except RebuildError as exc:
        _failed(hv, leases, order, steps, exc, t, took_lease)
        raise


def host_local(order: RebuildOrder, emulator: str, host: str, config_drive_dir: Path) -> tuple[str, list[str]]:
    """The order's XML with this host's QEMU binary, and what was rewritten. Refuses (step
    validate) a domain that needs a host file this host does not have, naming it, instead
    of leaving libvirt to fail at start with a less helpful message."""
    xml, rewritten = order.xml, []
    ordered = emulator_of(xml)
    if ordered is not None and emulator and ordered != emulator:
        xml = with_emulator(xml, emulator)
        rewritten.append(f"emulator {ordered} -> {emulator}")
    if ordered is not None:
        used = emulator or ordered
        if not os.access(used, os.X_OK):
            why = "does not exist" if not os.path.exists(used) else "is not executable"
            if emulator:
                raise RebuildError("validate", f"emulator {used} (EVACUATE_EMULATOR) {why} on {host}")
            raise RebuildError("validate", f"emulator {used} from the order {why} on {host}: set"
                               " EVACUATE_EMULATOR to this host's QEMU binary")
    for element, path in boot_files(xml):
        if not Path(path).exists():
            raise RebuildError("validate", f"<{element}> {path} does not exist on {host}")
    kept = config_drive_of(xml)
    if kept and not (order.config_drive_b64 or order.config_drive_path):
        if not Path(kept).is_file():
            raise RebuildError("validate", f"config drive {kept} does not exist on {host} and the order"
                               " carries no new one")
        if Path(kept) != config_drive_dir / f"{order.instance_uuid}.iso":
            rewritten.append(f"config drive {kept} -> {config_drive_dir}")
    return xml, rewritten


def _failed(hv: Hypervisor, leases: LeaseStore, order: RebuildOrder, steps: Steps, exc: RebuildError,
            t: float, took_lease: bool) -> None:
    steps.fail(exc.step, t, exc.message)
    # Give back only a lease this rebuild took, and never the lease of a copy running here
    # (a redelivered or misrouted order must not unguard a live VM).
    if took_lease and not hv.is_active(order.instance_uuid):
        leases.release(order.instance_uuid)
    exc.steps = steps  # type: ignore[attr-defined]


def staged_drive(order: RebuildOrder, hv: Hypervisor) -> bytes:
    """A config drive the templater put on the shared storage: read it and check it."""
    path = Path(order.config_drive_path or "")
    if not is_shared(str(path), hv.shared_storage):
        raise RebuildError("attach-config-drive", f"config drive {path} is not on the shared storage")
    iso = path.read_bytes()
    digest = hashlib.sha256(iso).hexdigest()
    if digest != order.config_drive_sha256:
        raise RebuildError("attach-config-drive",
                           f"config drive {path} has sha256 {digest[:16]}..., the order says"
                           f" {(order.config_drive_sha256 or '(none)')[:16]}...")
    return iso
