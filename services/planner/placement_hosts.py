"""Free capacity of the candidate hosts, kept in heaps so the best host is found cheaply.

Hosts are ranked by most free RAM (after placement the order is the same, since every
candidate receives the same flavor), ties by name. There is one heap per (pool,
aggregate) pair that some instance asks for; an entry is ``(-free RAM, name, version)``
and goes stale when the host's version moves on (lazy deletion). A host that cannot take
even the smallest pending flavor is dropped from the heaps for good.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable
from enum import StrEnum

from services.planner.placement_model import Flavor, HostInfo


class Pool(StrEnum):
    """Which recovery methods may use a host: reserved hosts move to NORMAL once taken."""

    NORMAL = "normal"
    RESERVED = "reserved"


class HostState:
    """The mutable view of one candidate host during a plan."""

    __slots__ = (
        "name",
        "info",
        "cap_vcpus",
        "cap_memory",
        "cap_disk",
        "used_vcpus",
        "used_memory",
        "used_disk",
        "version",
        "pools",
        "heap_keys",
    )

    def __init__(self, info: HostInfo) -> None:
        self.name = info.name
        self.info = info
        self.cap_vcpus = math.floor(info.vcpus * info.cpu_ratio)
        self.cap_memory = math.floor(info.memory_mib * info.ram_ratio)
        self.cap_disk = math.floor(info.disk_gib * info.disk_ratio)
        self.used_vcpus = info.used.vcpus
        self.used_memory = info.used.memory_mib
        self.used_disk = info.used.disk_gib
        self.version = 0
        self.pools: set[Pool] = set()
        self.heap_keys: tuple[str | None, ...] = (None,)  # set by HostHeaps

    @property
    def free(self) -> Flavor:
        return Flavor(
            max(0, self.cap_vcpus - self.used_vcpus),
            max(0, self.cap_memory - self.used_memory),
            max(0, self.cap_disk - self.used_disk),
        )

    @property
    def free_memory(self) -> int:
        return self.cap_memory - self.used_memory

    def fits(self, need: Flavor) -> bool:
        return (
            need.memory_mib <= self.cap_memory - self.used_memory
            and need.vcpus <= self.cap_vcpus - self.used_vcpus
            and need.disk_gib <= self.cap_disk - self.used_disk
        )

    def shortages(self, need: Flavor) -> list[str]:
        """The dimensions in which ``need`` does not fit, e.g. ``["RAM", "disk"]``."""
        short = []
        if need.vcpus > self.cap_vcpus - self.used_vcpus:
            short.append("vCPU")
        if need.memory_mib > self.cap_memory - self.used_memory:
            short.append("RAM")
        if need.disk_gib > self.cap_disk - self.used_disk:
            short.append("disk")
        return short

    def take(self, need: Flavor) -> None:
        self.used_vcpus += need.vcpus
        self.used_memory += need.memory_mib
        self.used_disk += need.disk_gib
        self.version += 1


_Entry = tuple[int, str, int]


class HostHeaps:
    """Best-first access to the candidate hosts of a pool, optionally within an aggregate."""

    def __init__(self, aggregates_wanted: Iterable[str], smallest_need: Flavor) -> None:
        self._aggregates = frozenset(aggregates_wanted)
        self.smallest = smallest_need
        self._heaps: dict[tuple[Pool, str | None], list[_Entry]] = {}
        self._counts: Counter[tuple[Pool, str | None]] = Counter()

    def add(self, host: HostState, pool: Pool) -> None:
        """Make ``host`` a candidate of ``pool`` (a taken reserved host joins NORMAL)."""
        if pool in host.pools:
            return
        if not host.pools:
            wanted = sorted(host.info.aggregates & self._aggregates)
            host.heap_keys = (None, *wanted)
        host.pools.add(pool)
        for key in host.heap_keys:
            self._counts[(pool, key)] += 1
        self._push(host, (pool,))

    def changed(self, host: HostState) -> None:
        """Re-rank ``host`` after its usage changed (its old entries are now stale)."""
        self._push(host, host.pools)

    def _push(self, host: HostState, pools: Iterable[Pool]) -> None:
        if not host.fits(self.smallest):
            return
        entry = (-host.free_memory, host.name, host.version)
        for pool in pools:
            for key in host.heap_keys:
                heapq.heappush(self._heaps.setdefault((pool, key), []), entry)

    def best(
        self,
        pool: Pool,
        aggregate: str | None,
        need: Flavor,
        hosts: dict[str, HostState],
        accept: Callable[[HostState], bool],
        examined: list[HostState],
    ) -> HostState | None:
        """The host with the most free RAM in ``pool`` (and ``aggregate``) that ``accept``s.

        Hosts looked at and refused are appended to ``examined``, roomiest first. The search
        stops at the first host with less free RAM than ``need``: all below it have less.
        """
        heap = self._heaps.get((pool, aggregate))
        if not heap:
            return None
        passed: list[_Entry] = []
        found: HostState | None = None
        while heap:
            entry = heapq.heappop(heap)
            host = hosts[entry[1]]
            if entry[2] != host.version or not host.fits(self.smallest):
                continue  # stale entry, or a host too full for anything left: drop it
            passed.append(entry)
            if -entry[0] < need.memory_mib:
                break
            if accept(host):
                found = host
                break
            examined.append(host)
        for entry in passed:
            heapq.heappush(heap, entry)
        return found

    def count(self, pool: Pool, aggregate: str | None) -> int:
        """How many candidate hosts ``pool`` has (in ``aggregate``), full ones included."""
        return self._counts.get((pool, aggregate), 0)
