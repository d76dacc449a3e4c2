"""The bucketed host rankings give the same answer as sorting every host (hypothesis).

``HostHeaps`` keeps each (pool, aggregate) ranking in buckets of free RAM, each a small
heap, with stale entries dropped lazily. Whatever the sequence of searches, takes and
reserved hosts joining the normal pool, ``best`` must return what a plain sort by (most
free RAM, name) returns, and list the same refused hosts in the same order.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.planner.placement_hosts import HostHeaps, HostState, Pool
from services.planner.placement_model import Flavor, HostInfo

AGGREGATES = ("ssd", "gpu")
SMALLEST = Flavor(1, 512, 1)


def brute_best(
    hosts: list[HostState], pool: Pool, aggregate: str | None, need: Flavor, refused: set[str]
) -> tuple[HostState | None, list[str]]:
    order = sorted(
        (
            h
            for h in hosts
            if pool in h.pools and (aggregate is None or aggregate in h.info.aggregates) and h.fits(SMALLEST)
        ),
        key=lambda h: (-h.free_memory, h.name),
    )
    examined: list[str] = []
    for host in order:
        if host.free_memory < need.memory_mib:
            break
        if host.name not in refused and host.fits(need):
            return host, examined
        examined.append(host.name)
    return None, examined


host_infos = st.lists(
    st.builds(
        HostInfo,
        name=st.just(""),
        vcpus=st.integers(1, 16),
        # Few distinct sizes, so equal free RAM (ties by name) is common.
        memory_mib=st.sampled_from([4096, 8192, 16384, 32768, 65536]),
        disk_gib=st.integers(10, 400),
        reserved=st.booleans(),
        used=st.builds(Flavor, st.integers(0, 8), st.sampled_from([0, 1024, 2048, 4096]), st.integers(0, 20)),
        aggregates=st.frozensets(st.sampled_from(AGGREGATES)),
    ),
    min_size=1,
    max_size=60,
)
steps = st.lists(
    st.tuples(
        st.sampled_from([None, *AGGREGATES]),
        st.builds(Flavor, st.integers(1, 4), st.sampled_from([512, 1024, 2048, 4096, 8192, 40000]), st.integers(1, 40)),
        st.frozensets(st.integers(0, 59), max_size=6),  # hosts this search refuses
        st.booleans(),  # search the reserved pool first
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(infos=host_infos, plan_steps=steps)
def test_best_matches_a_full_sort_through_takes_and_reserved_hosts_joining(
    infos: list[HostInfo], plan_steps: list[tuple[str | None, Flavor, frozenset[int], bool]]
) -> None:
    hosts = [HostState(_named(info, f"h{n:02d}")) for n, info in enumerate(infos)]
    by_name = {h.name: h for h in hosts}
    heaps = HostHeaps(AGGREGATES, SMALLEST, by_name)
    for host in reversed(hosts):  # insertion order must not matter
        heaps.add(host, Pool.RESERVED if host.info.reserved else Pool.NORMAL)
    for aggregate, need, refused_at, reserved_first in plan_steps:
        refused = {f"h{n:02d}" for n in refused_at}
        for pool in (Pool.RESERVED, Pool.NORMAL) if reserved_first else (Pool.NORMAL,):
            expected, expected_examined = brute_best(hosts, pool, aggregate, need, refused)
            examined: list[HostState] = []

            def accept(host: HostState, n: Flavor = need, r: set[str] = refused) -> bool:
                return host.name not in r and host.fits(n)

            found = heaps.best(pool, aggregate, need, accept, examined)
            assert found is expected
            assert [h.name for h in examined] == expected_examined
            if found is not None:  # the caller's part of the contract: take, then re-rank
                found.take(need)
                heaps.changed(found)
                if Pool.NORMAL not in found.pools:
                    heaps.add(found, Pool.NORMAL)
                break


def _named(info: HostInfo, name: str) -> HostInfo:
    return HostInfo(
        name=name,
        vcpus=info.vcpus,
        memory_mib=info.memory_mib,
        disk_gib=info.disk_gib,
        reserved=info.reserved,
        used=info.used,
        aggregates=info.aggregates,
    )


def test_best_matches_a_full_sort_on_a_cluster_of_many_buckets() -> None:
    rng = random.Random(5)
    hosts = [
        HostState(
            HostInfo(
                f"h{n:03d}",
                64,
                rng.choice([65536, 131072, 262144]),
                4000,
                reserved=n % 9 == 0,
                used=Flavor(0, rng.randrange(0, 65536, 1024), 0),
                aggregates=frozenset(a for a in AGGREGATES if rng.random() < 0.5),
            )
        )
        for n in range(200)
    ]
    heaps = HostHeaps(AGGREGATES, SMALLEST, {h.name: h for h in hosts})
    for host in hosts:
        heaps.add(host, Pool.RESERVED if host.info.reserved else Pool.NORMAL)
    for _ in range(1500):
        need = Flavor(1, rng.choice([2048, 4096, 8192, 16384]), 1)
        refused = {f"h{rng.randrange(200):03d}" for _ in range(rng.randrange(3))}
        aggregate = rng.choice([None, None, *AGGREGATES])
        pool = rng.choice([Pool.NORMAL, Pool.NORMAL, Pool.RESERVED])
        expected, expected_examined = brute_best(hosts, pool, aggregate, need, refused)
        examined: list[HostState] = []
        accept = lambda h, r=refused, n=need: h.name not in r and h.fits(n)  # noqa: E731
        found = heaps.best(pool, aggregate, need, accept, examined)
        assert found is expected
        assert [h.name for h in examined] == expected_examined
        if found is not None:
            found.take(need)
            heaps.changed(found)
            if Pool.NORMAL not in found.pools:
                heaps.add(found, Pool.NORMAL)
