"""A tiny real guest for the qemu tests: Debian's cloud kernel + a busybox initramfs whose
/init prints its DMI UUID on the serial console (../shared/notes/qemu-on-this-machine.md)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import time
from pathlib import Path

MARKER = "EVACUATE-GUEST uuid="
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "EVACUATE-GUEST uuid=$(/bin/busybox cat /sys/class/dmi/id/product_uuid)"
while true; do /bin/busybox sleep 1; done
"""


def missing_tools() -> list[str]:
    need = ["qemu-system-x86_64", "libvirtd", "busybox", "cpio", "apt-get", "dpkg-deb"]
    return [t for t in need if shutil.which(t) is None]


def build(cache: Path) -> tuple[Path, Path]:
    """(kernel, initrd), built once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    kernel, initrd = cache / "vmlinuz", cache / "initrd.gz"
    if not kernel.exists():
        deps = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True,
                              check=True).stdout
        pkg = next(line.split()[1] for line in deps.splitlines() if "Depends:" in line)
        subprocess.run(["apt-get", "download", pkg], cwd=cache, check=True, capture_output=True)
        deb = next(cache.glob("linux-image-*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "x")], check=True)
        shutil.copy(next((cache / "x" / "boot").glob("vmlinuz-*")), kernel)
        shutil.rmtree(cache / "x")
        deb.unlink()
    if not initrd.exists():
        tree = cache / "initramfs"
        (tree / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
        (tree / "init").write_text(INIT)
        (tree / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
        packed = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files,
                                capture_output=True, check=True).stdout
        initrd.write_bytes(gzip.compress(packed))
    return kernel, initrd


def domain_xml(uuid: str, name: str, mac: str, kernel: Path, initrd: Path, disk: Path, serial: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='{mac}'/></interface>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def embed_root(root: Path) -> str:
    """An embedded QEMU driver root (one per executor process): runs as root, or every
    call re-probes capabilities and a start takes ~48 s."""
    for conf in (root / "etc" / "qemu.conf", root / "etc" / "qemu" / "qemu.conf"):  # where libvirt versions look
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text('user = "root"\ngroup = "root"\nstdio_handler = "file"\n')  # no virtlogd
    return f"qemu:///embed?root={root}"


def guests_of(root: Path) -> list[int]:
    """Pids of the QEMU processes started from this embedded root (its files are on their
    command line), whatever the binary is called."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if f"{root}/" in cmd and state != "Z":
            out.append(int(proc.name))
    return out


def kill_guests(root: Path) -> None:
    """QEMU outlives the executor that embedded it: stop the guests it started, and wait
    until they are gone."""
    deadline = time.monotonic() + 10
    while pids := guests_of(root):
        for pid in pids:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        if time.monotonic() > deadline:
            raise RuntimeError(f"QEMU processes of {root} survive SIGKILL: {pids}")
        time.sleep(0.05)
