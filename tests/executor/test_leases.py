"""Storage leases: a live holder blocks a start, an expired lease is taken, and two OS
processes racing for one VM never both win."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.synchronize import Barrier

from services.common.errors import RebuildError
from services.common.schemas import PowerState
from services.executor.leases import LeaseStore
from services.executor.rebuild import rebuild

from .conftest import TARGET, Site

ROUNDS = 150
RACERS = 3


def test_lease_renewed_by_a_live_host_blocks_the_start(site: Site) -> None:
    """The holder is the order's source (a wrongly declared failure): the executor waits
    out the lease once, sees it renewed again, and refuses."""
    vm = site.vm(0)
    target = site.target()
    holder = site.leases(vm.host, timeout=0.6)
    assert holder.acquire(vm.uuid) is None
    stop = threading.Event()

    def renewing() -> None:  # a live host renews every 0.2 s (a third of the timeout)
        while not stop.wait(0.2):
            assert holder.renew([vm.uuid]) == []

    renewer = threading.Thread(target=renewing)
    renewer.start()
    try:
        time.sleep(0.8)  # older than the timeout since the take, not since the last renewal
        rebuild(target, site.leases(timeout=0.6), site.order(vm, site.xml(vm)), TARGET, site.root / "cd")
        raise AssertionError("a VM whose lease a live host renews was started")
    except RebuildError as err:
        assert err.step == "take-lease" and f"lease held by {vm.host}" in err.message, err
    finally:
        stop.set()
        renewer.join()
    assert target.lookup(vm.uuid) is None
    assert holder.read(vm.uuid)[0] == vm.host  # type: ignore[index]


def test_the_failed_hosts_last_renewal_is_waited_out_once(site: Site) -> None:
    """NodeDown may come before the fenced host's last renewal is a lease timeout old: the
    executor waits for the rest of it instead of failing the rebuild (which would be placed
    again elsewhere, excluding a good target)."""
    vm = site.vm(0)
    target = site.target()
    holder = site.leases(vm.host, timeout=1.0)
    assert holder.acquire(vm.uuid) is None  # renewed just now, then the host is fenced
    started = time.monotonic()
    _, state = rebuild(target, site.leases(timeout=1.0), site.order(vm, site.xml(vm)), TARGET, site.root / "cd")
    assert state == PowerState.RUNNING and time.monotonic() - started >= 0.9
    assert site.leases().read(vm.uuid)[0] == TARGET  # type: ignore[index]


def test_a_lease_held_by_another_than_the_source_is_not_waited_for(site: Site) -> None:
    vm = site.vm(0)
    assert site.leases("h-other", timeout=5.0).acquire(vm.uuid) is None
    started = time.monotonic()
    try:
        rebuild(site.target(), site.leases(timeout=5.0), site.order(vm, site.xml(vm)), TARGET, site.root / "cd")
        raise AssertionError("started while another host holds the lease")
    except RebuildError as err:
        assert "lease held by h-other" in err.message
    assert time.monotonic() - started < 2.0


def test_expired_lease_is_taken(site: Site) -> None:
    vm = site.vm(0)
    (site.shared / ".evacuate" / "leases").mkdir(parents=True, exist_ok=True)
    path = site.shared / ".evacuate" / "leases" / f"{vm.uuid}.lease"
    path.write_text(json.dumps({"holder": "h1", "renewed_at": time.time() - 60}))
    os.utime(path, (time.time() - 60, time.time() - 60))  # a lease's time is its file's mtime
    target = site.target()
    _, state = rebuild(target, site.leases(), site.order(vm, site.xml(vm)), TARGET, site.root / "cd")
    assert state == PowerState.RUNNING
    assert site.leases().read(vm.uuid)[0] == TARGET  # type: ignore[index]
    # The old holder comes back: it must not renew over the new holder.
    lost = site.leases("h1").renew([vm.uuid])
    assert [x.holder for x in lost] == [TARGET] and site.leases().read(vm.uuid)[0] == TARGET  # type: ignore[index]


def test_shut_off_vm_takes_no_lease_and_is_not_blocked(site: Site) -> None:
    vm = site.vm(0, running=False)
    assert site.leases("h1").acquire(vm.uuid) is None
    rebuild(site.target(), site.leases(), site.order(vm, site.xml(vm), PowerState.SHUTOFF), TARGET, site.root / "cd")
    assert site.leases().read(vm.uuid)[0] == "h1"  # type: ignore[index]


def test_lock_held_by_another_taker_is_waited_for_then_reported(site: Site) -> None:
    store = LeaseStore(str(site.shared), TARGET, timeout=2.5, lock_wait=0.1)
    fd = os.open(store.dir / "abc.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        held = store.acquire("abc")
        assert held is not None and "held by another taker" in held.holder
    finally:
        os.close(fd)  # a taker that dies drops its lock: nothing stale to break
    assert store.acquire("abc") is None


def _racer(shared: str, host: str, barrier: Barrier, results: mp.Queue) -> None:  # type: ignore[type-arg]
    store = LeaseStore(shared, host, timeout=30.0)
    for i in range(ROUNDS):
        barrier.wait()
        held = store.acquire(f"race-{i:04d}")
        results.put((i, host, None if held is None else held.holder))


def test_racing_processes_have_exactly_one_winner_each_round(site: Site) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_racer, args=(str(site.shared), f"racer{n}", barrier, results))
             for n in range(RACERS)]
    for p in procs:
        p.start()
    rounds: dict[int, dict[str, str | None]] = {}
    for _ in range(ROUNDS * RACERS):
        i, host, holder = results.get(timeout=30)
        rounds.setdefault(i, {})[host] = holder
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    store = site.leases("observer")
    for i, outcome in sorted(rounds.items()):
        winners = [h for h, holder in outcome.items() if holder is None]
        assert len(winners) == 1, f"round {i}: winners {winners}"
        assert all(holder == winners[0] for h, holder in outcome.items() if h != winners[0]), outcome
        assert store.read(f"race-{i:04d}")[0] == winners[0]  # type: ignore[index]
    print("wins per racer:", {h: sum(1 for o in rounds.values() if o[h] is None) for h in outcome})
