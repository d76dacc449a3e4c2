"""Free capacity of the candidate hosts, ranked so the best host is found cheaply.

Hosts are ranked by most free RAM (after placement the order is the same, since every
candidate receives the same flavor), ties by name. There is one ranking per (pool,
aggregate) pair that some instance asks for; an entry is ``(-free RAM, rank by name,
version)`` and goes stale when the host's version moves on (lazy deletion). A host that cannot take
even the smallest pending flavor is dropped from the rankings for good.

A ranking is a row of buckets by free RAM (a fixed width of MiB each, about one bucket
per few hosts), each bucket a small heap. Walking the buckets from the top gives the
same order as one heap of every entry, but an operation costs a heap of a few entries,
not of every host, so the cost per instance does not grow with the cluster.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
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
        "rank",
        "rankings",
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
        self.rank = 0  # position by name among the candidates, set by HostHeaps
        self.rankings: list[_Ranking] = []  # the rankings it is in, set by HostHeaps

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


_Entry = tuple[int, int, int]  # (-free RAM, rank by name, version)

# About this many hosts per bucket, when free RAM is spread evenly.
HOSTS_PER_BUCKET = 4


class _Ranking:
    """The entries of one (pool, aggregate) pair, in buckets of ``width`` MiB free RAM."""

    __slots__ = ("buckets", "top", "width", "last")

    def __init__(self, width: int, count: int) -> None:
        self.width = width
        self.last = count - 1
        self.buckets: list[list[_Entry]] = [[] for _ in range(count)]
        self.top = 0  # no bucket above this one holds an entry

    def push(self, entry: _Entry) -> None:
        index = -entry[0] // self.width
        if index > self.last:
            index = self.last
        heapq.heappush(self.buckets[index], entry)
        if index > self.top:
            self.top = index


class HostHeaps:
    """Best-first access to the candidate hosts of a pool, optionally within an aggregate."""

    def __init__(self, aggregates_wanted: Iterable[str], smallest_need: Flavor, hosts: Mapping[str, HostState]) -> None:
        self._aggregates = frozenset(aggregates_wanted)
        self.smallest = smallest_need
        self._by_rank = [hosts[name] for name in sorted(hosts)]
        for rank, host in enumerate(self._by_rank):
            host.rank = rank
        # Free RAM only shrinks during a plan, so the buckets cover every value it takes.
        self._buckets = max(1, len(hosts) // HOSTS_PER_BUCKET)
        most = max((host.free_memory for host in self._by_rank), default=0)
        self._width = max(1, -(-(most + 1) // self._buckets))
        self._rankings: dict[tuple[Pool, str | None], _Ranking] = {}
        self._counts: Counter[tuple[Pool, str | None]] = Counter()

    def add(self, host: HostState, pool: Pool) -> None:
        """Make ``host`` a candidate of ``pool`` (a taken reserved host joins NORMAL)."""
        if pool in host.pools:
            return
        if not host.pools:
            wanted = sorted(host.info.aggregates & self._aggregates)
            host.heap_keys = (None, *wanted)
        host.pools.add(pool)
        joined = []
        for key in host.heap_keys:
            self._counts[(pool, key)] += 1
            ranking = self._rankings.get((pool, key))
            if ranking is None:
                ranking = self._rankings[(pool, key)] = _Ranking(self._width, self._buckets)
            joined.append(ranking)
        host.rankings = host.rankings + joined
        self._push(host, joined)

    def changed(self, host: HostState) -> None:
        """Re-rank ``host`` after its usage changed (its old entries are now stale)."""
        self._push(host, host.rankings)

    def _push(self, host: HostState, rankings: list[_Ranking]) -> None:
        if not host.fits(self.smallest):
            return
        entry = (-host.free_memory, host.rank, host.version)
        for ranking in rankings:
            ranking.push(entry)

    def best(
        self,
        pool: Pool,
        aggregate: str | None,
        need: Flavor,
        accept: Callable[[HostState], bool],
        examined: list[HostState],
    ) -> HostState | None:
        """The host with the most free RAM in ``pool`` (and ``aggregate``) that ``accept``s.

        The caller takes the host it gets and calls :meth:`changed`, so the winner's entry
        is not put back. Hosts looked at and refused are appended to ``examined``, roomiest
        first. The search stops at the first host with less free RAM than ``need``: all
        below it have less.
        """
        ranking = self._rankings.get((pool, aggregate))
        if ranking is None:
            return None
        buckets, by_rank, smallest = ranking.buckets, self._by_rank, self.smallest
        passed: list[_Entry] = []
        found: HostState | None = None
        index = ranking.top
        while index >= 0:
            bucket = buckets[index]
            while bucket:
                entry = heapq.heappop(bucket)
                host = by_rank[entry[1]]
                if entry[2] != host.version or not host.fits(smallest):
                    continue  # stale entry, or a host too full for anything left: drop it
                if -entry[0] < need.memory_mib:
                    passed.append(entry)
                    break
                if accept(host):
                    found = host
                    break
                passed.append(entry)
                examined.append(host)
            else:
                index -= 1  # this bucket is empty: go on with the next lower one
                continue
            break
        ranking.top = max(index, 0)
        for entry in passed:
            ranking.push(entry)
        return found

    def count(self, pool: Pool, aggregate: str | None) -> int:
        """How many candidate hosts ``pool`` has (in ``aggregate``), full ones included."""
        return self._counts.get((pool, aggregate), 0)
