"""Network namespaces for simulated hosts cut off the network (issue 4 and 10): an
executor runs in a namespace of its own, joined to the machine by a veth pair, and reaches
a broker listening on an extra address of the loopback device. Cutting the host off is
taking the namespace's end of the veth down; its storage heartbeat (the shared storage
is a local directory) goes on. Used by tests/test_detector_process.py and the chaos
campaign's network-cut scenario (services/evacctl/chaos_netcut.py). Needs root.

Names never collide between users running at the same time: a namespace is called
``<prefix>-<host>`` and its veth ends ``<prefix>-<host>-h`` (machine side) and
``-n`` (namespace side); the chaos campaign's prefix carries its process id. Its
addresses come from a /24 of 10.252.0.0/16 claimed by adding the broker's address to
``lo`` (adding an address that exists fails: the claim is atomic); the test module uses
fixed addresses in 10.251.0.0/16."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.evacctl.simcluster import SimVM, write_node

if TYPE_CHECKING:
    from services.evacctl.stack import Stack

IFNAMSIZ = 15  # the longest interface name the kernel takes


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"evprobe-{os.getpid()}"
    r = ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def claim_subnet(start: int, base: str = "10.252") -> int | None:
    """Claim one /24 of ``base``.0.0/16 by adding its .1 to ``lo`` (the broker's
    address); tries from ``start`` on. Returns the third octet, or None when all are
    taken. Release it with ``release_subnet``."""
    for i in range(256):
        x = (start + i) % 256
        if ip("addr", "add", f"{base}.{x}.1/32", "dev", "lo", check=False).returncode == 0:
            return x
    return None


def release_subnet(x: int, base: str = "10.252") -> None:
    ip("addr", "del", f"{base}.{x}.1/32", "dev", "lo", check=False)


@dataclass
class NetNs:
    host: str
    outer_ip: str  # the machine's end of the veth (the namespace's default gateway)
    inner_ip: str  # the namespace's end
    prefix: str = "evdp"

    def __post_init__(self) -> None:
        if len(self.outer) > IFNAMSIZ:
            raise ValueError(f"veth name {self.outer!r} is longer than {IFNAMSIZ} characters")

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.host}"

    @property
    def outer(self) -> str:
        return f"{self.prefix}-{self.host}-h"

    @property
    def inner(self) -> str:
        return f"{self.prefix}-{self.host}-n"

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ip("netns", "exec", self.name, *args)

    def create(self) -> None:
        self.delete()
        ip("netns", "add", self.name)
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.name)
        ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        self.exec("ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner)
        self.exec("ip", "link", "set", "lo", "up")
        self.restore()

    def cut(self) -> float:
        """Take the namespace's veth down. Returns when."""
        t = time.time()
        self.exec("ip", "link", "set", self.inner, "down")
        return t

    def restore(self) -> None:
        self.exec("ip", "link", "set", self.inner, "up")
        self.exec("ip", "route", "replace", "default", "via", self.outer_ip)

    def delete(self) -> None:
        ip("link", "del", self.outer, check=False)  # takes its peer with it
        ip("netns", "del", self.name, check=False)


def spawn_in_netns(stack: Stack, ns: NetNs, host: str, vms: list[SimVM], memory_mib: int = 65536,
                   cpus: int = 32, **env: str) -> None:
    """A simulated host like ``Stack.add_host``, its executor run inside ``ns``; ``env``
    adds to (or overrides) the executor's environment."""
    write_node(stack.workdir / "nodes" / f"{host}.xml", vms, stack.shared_dir, stack.workdir / "local" / host,
               memory_mib=memory_mib, cpus=cpus)
    stack.vms[host] = vms
    stack.host_size[host] = (memory_mib, cpus)
    stack.host_env[host] = dict(env)
    name = f"executor-{host}"
    log = open(Path(stack.workdir) / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
    # `ip netns exec` execs the command: the pid is the executor's (the process fence's target).
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "services.executor"],
        env=stack.env(**stack.executor_env(host)), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    stack.procs[name] = proc
