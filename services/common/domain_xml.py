"""Reading and rewriting libvirt domain XML: identity, disks, NICs, evacuability.
Pure functions over strings."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, unescape

from services.common.errors import RebuildError
from services.common.schemas import Disk, Nic

METADATA_NS = "urn:evacuate:1"


@dataclass(frozen=True)
class DomainFacts:
    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    evacuable: bool
    not_evacuable_reason: str | None


def parse_domain(xml: str, shared_storage: str) -> DomainFacts:
    """Facts of a domain; raises RebuildError('validate', ...) on XML that is not a domain."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise RebuildError("validate", f"malformed domain XML: {exc}") from None
    if root.tag != "domain":
        raise RebuildError("validate", f"root element is <{root.tag}>, expected <domain>")
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = (root.findtext("name") or "").strip()
    if not uuid or not name:
        raise RebuildError("validate", "domain XML has no <uuid> or no <name>")
    memory = root.find("memory")
    memory_mib = _to_mib(memory.text or "0", memory.get("unit", "KiB")) if memory is not None else 0
    vcpus = int((root.findtext("vcpu") or "1").strip())
    ips = _metadata_ips(root)
    disks = []
    for d in root.findall("./devices/disk"):
        if d.get("device", "disk") not in ("disk", "lun"):
            continue  # cdrom/floppy (e.g. a config drive) is not a VM disk
        src = d.find("source")
        target = d.find("target")
        tdev = target.get("dev", "?") if target is not None else "?"
        if d.get("type") == "network":
            proto = src.get("protocol", "net") if src is not None else "net"
            image = src.get("name", "") if src is not None else ""  # not `name`: that is the domain's
            disks.append(Disk(target=tdev, path=f"{proto}:{image}", shared=True))
            continue
        path = ""
        if src is not None:
            path = src.get("file") or src.get("dev") or src.get("volume") or ""
        disks.append(Disk(target=tdev, path=path, shared=is_shared(path, shared_storage)))
    nics = []
    for i in root.findall("./devices/interface"):
        mac = i.find("mac")
        if mac is not None and mac.get("address"):
            addr = mac.get("address", "").lower()
            nics.append(Nic(mac=addr, ip=ips.get(addr)))
    reason = None
    for disk in disks:
        if not disk.shared:
            reason = f"disk {disk.target} ({disk.path or 'no source'}) is not on shared storage {shared_storage}"
            break
    return DomainFacts(uuid, name, vcpus, memory_mib, tuple(disks), tuple(nics), reason is None, reason)


def is_shared(path: str, shared_storage: str) -> bool:
    if not path:
        return False
    root = os.path.normpath(shared_storage)
    return os.path.normpath(path).startswith(root + os.sep)


def _to_mib(value: str, unit: str) -> int:
    factors = {"b": 1 / 2**20, "bytes": 1 / 2**20, "k": 1 / 1024, "kib": 1 / 1024, "kb": 1000 / 2**20,
               "m": 1, "mib": 1, "mb": 10**6 / 2**20, "g": 1024, "gib": 1024, "gb": 10**9 / 2**20}
    return int(int(value.strip()) * factors.get(unit.lower(), 1 / 1024))


def _metadata_ips(root: ET.Element) -> dict[str, str]:
    out = {}
    for nic in root.iter(f"{{{METADATA_NS}}}nic"):
        mac, ip = nic.get("mac"), nic.get("ip")
        if mac and ip:
            out[mac.lower()] = ip
    return out


CONFIG_DRIVE_SERIAL = "config-2"


def _config_drive_target(root: ET.Element, kept: ET.Element | None) -> tuple[str, str]:
    """(dev, bus) for the config-drive cdrom: the one it had, else a name no other disk
    uses on a bus the machine has (IDE on i440fx, SATA on q35, which has no IDE)."""
    used = {t.get("dev", "") for t in root.findall("./devices/disk/target")}
    if kept is not None and kept.get("dev") and kept.get("dev") not in used:
        return kept.get("dev", ""), kept.get("bus", "ide")
    machine = ""
    os_type = root.find("os/type")
    if os_type is not None:
        machine = os_type.get("machine", "")
    bus, prefix, letters = ("sata", "sd", "abcdefghijklmnopqrstuvwxyz") if "q35" in machine else ("ide", "hd", "dcba")
    for letter in letters:
        if prefix + letter not in used:
            return prefix + letter, bus
    raise RebuildError("attach-config-drive", f"no free {bus} target for the config drive (used: {sorted(used)})")


def with_config_drive(xml: str, iso_path: str) -> str:
    """Attach (or re-point) the config-drive cdrom; everything else stays as it was."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise RebuildError("attach-config-drive", f"malformed domain XML: {exc}") from None
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    kept: ET.Element | None = None
    for d in devices.findall("disk"):
        if d.get("device") == "cdrom" and (d.findtext("serial") or "").strip() == CONFIG_DRIVE_SERIAL:
            kept = d.find("target") if kept is None else kept
            devices.remove(d)
    dev, bus = _config_drive_target(root, kept)
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "cdrom"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
    ET.SubElement(disk, "source", {"file": iso_path})
    ET.SubElement(disk, "target", {"dev": dev, "bus": bus})
    ET.SubElement(disk, "readonly")
    ET.SubElement(disk, "serial").text = CONFIG_DRIVE_SERIAL
    return ET.tostring(root, encoding="unicode")


def same_identity(a: str, b: str) -> bool:
    """Two domain XMLs describe the same VM: same UUID, name, MAC addresses and disks."""
    fa, fb = parse_domain(a, "/"), parse_domain(b, "/")

    def identity(f: DomainFacts) -> tuple[object, ...]:
        return f.uuid, f.name, sorted(n.mac for n in f.nics), sorted((d.target, d.path) for d in f.disks)

    return identity(fa) == identity(fb)


# Host-local parts of a domain. Everything else in an order's XML is the VM's identity and
# is defined exactly as it came; these are the paths that name files of the host itself.

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_EMULATOR = re.compile(r"<emulator(?:\s[^>]*)?>(.*?)</emulator\s*>", re.S)


def _root(xml: str, step: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise RebuildError(step, f"malformed domain XML: {exc}") from None


def emulator_of(xml: str) -> str | None:
    """The ``<devices><emulator>`` path, or None when the domain names none (libvirt picks)."""
    text = _root(xml, "validate").findtext("devices/emulator")
    return None if text is None else text.strip()


def with_emulator(xml: str, emulator: str) -> str:
    """The same document, byte for byte, except the text of ``<devices><emulator>``."""
    current = emulator_of(xml)
    if current is None:
        raise RebuildError("validate", "the domain XML has no <devices><emulator> to rewrite")
    comments = [m.span() for m in _COMMENT.finditer(xml)]
    found = [m for m in _EMULATOR.finditer(xml)
             if not any(a <= m.start() < b for a, b in comments) and unescape(m.group(1)).strip() == current]
    if len(found) != 1:
        raise RebuildError("validate", f"cannot tell which of {len(found)} <emulator> elements to rewrite")
    start, end = found[0].span(1)
    return xml[:start] + escape(emulator) + xml[end:]


def boot_files(xml: str) -> list[tuple[str, str]]:
    """(element, path) of the host files a domain boots from: <kernel>, <initrd>, <loader>."""
    os_el = _root(xml, "validate").find("os")
    if os_el is None:
        return []
    return [(tag, (os_el.findtext(tag) or "").strip()) for tag in ("kernel", "initrd", "loader")
            if (os_el.findtext(tag) or "").strip()]


def config_drive_of(xml: str) -> str | None:
    """The file behind the config-drive cdrom (serial config-2), or None when it has none."""
    for d in _root(xml, "validate").findall("./devices/disk"):
        if d.get("device") == "cdrom" and (d.findtext("serial") or "").strip() == CONFIG_DRIVE_SERIAL:
            src = d.find("source")
            return src.get("file") if src is not None and src.get("file") else None
    return None
