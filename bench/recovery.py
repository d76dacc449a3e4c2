"""End-to-end recovery time on the real stack (embedded broker, PostgreSQL, every service a
process, libvirt test driver, aggressive profile: 1 s heartbeats by default, 3 misses,
process fence): SIGKILL the executors of `--fail` hosts and time until every one of
their evacuable VMs is seen running (or defined, if it was off) on exactly one other
host in that host's own InstanceReport, and their evacuations are closed.

    .venv/bin/python bench/recovery.py [--vms 10 100 1000] [--hosts 3] [--fail 1] [--heartbeat 1.0] [--stages]
    .venv/bin/python bench/recovery.py --vms 100 --hosts 14 --fail 10     # 10 hosts x 100 VMs at once
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from services.evacctl.demo import expected, wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """User + system CPU time of every live service process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, proc in stack.procs.items():
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def print_stages(database_url: str, killed_at: float) -> None:
    """Where the time went: first and last audit line of each kind, relative to the kill."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT kind, count(*) AS n, min(at) AS first, max(at) AS last FROM audit WHERE at >= to_timestamp($1)"
            " GROUP BY kind ORDER BY min(at)", killed_at)
        steps = await conn.fetch(
            "SELECT s->>'name' AS name, count(*) AS n, avg((s->>'seconds')::float) AS mean,"
            " max((s->>'seconds')::float) AS worst FROM evacuation_items, jsonb_array_elements(steps) s"
            " GROUP BY 1 ORDER BY 3 DESC")
        failed = await conn.fetch(
            "SELECT regexp_replace(detail, '^[^ ]+ on [^ ]+: ', '') AS why, count(*) AS n FROM audit"
            " WHERE kind = 'rebuild-failed' AND at >= to_timestamp($1) GROUP BY 1 ORDER BY 2 DESC LIMIT 5", killed_at)
    finally:
        await conn.close()
    for r in failed:
        print(f"    rebuild failed x{r['n']:<5} {r['why'][:110]}")
    for r in steps:
        print(f"    step {r['name']:<17} x{r['n']:<5} mean {r['mean'] * 1000:7.1f} ms"
              f"  worst {r['worst'] * 1000:7.1f} ms")
    for r in rows:
        print(f"    {r['kind']:<22} x{r['n']:<5} first +{r['first'].timestamp() - killed_at:6.2f}s"
              f"  last +{r['last'].timestamp() - killed_at:6.2f}s")


async def wait_recovered(stack: Stack, view: ClusterView, victims: list[str], killed_at: float,
                         timeout: float) -> float | None:
    """Seconds from the kill until every evacuable VM of the victims is seen, in its old
    power state, in exactly one other live host's own report (and the evacuations are
    closed); None on timeout."""
    conn = await asyncpg.connect(stack.database_url)
    vms = [vm for v in victims for vm in stack.vms[v] if vm.shared]
    done_at = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if done_at is None and all(
                    [d.power_state for _, d in view.where(vm.uuid, set(victims))] == [expected(vm.running)]
                    for vm in vms):
                done_at = max(view.report_time.get(h, time.time()) for h in view.reports)
            if done_at is not None:
                closed = await conn.fetchval(
                    "SELECT count(*) FROM evacuations WHERE source = ANY($1) AND status <> 'running' AND created_at"
                    " >= to_timestamp($2)", victims, killed_at)
                if closed >= len(victims):
                    return done_at - killed_at
            await asyncio.sleep(0.05)
        return None
    finally:
        await conn.close()


async def one(vms: int, hosts: int, fail: int, heartbeat: float,
              stages: bool = False) -> tuple[float | None, bool, float]:
    workdir = Path(tempfile.mkdtemp(prefix="evacuate-bench-"))
    stack = Stack(workdir, fresh_database=True, heartbeat_interval=heartbeat)
    try:
        await asyncio.to_thread(stack.start_infra)
        stack.start_services()
        names = [f"h{i}" for i in range(1, hosts + 1)]
        survivors = hosts - fail
        for i, h in enumerate(names, 1):
            # Room on the survivors for every VM of the failed hosts.
            stack.add_host(i, h, vm_count=vms, shutoff=max(1, vms // 5), local=1,
                           memory_mib=(vms + fail * vms // survivors + 1) * 1024 * 2, cpus=max(32, 2 * vms))
        view = ClusterView(stack.kafka_bootstrap)
        await view.start()
        try:
            await wait_ready(stack, view, hosts, hosts * vms, timeout=300)
            await asyncio.sleep(2.0)
            cpu_before = cpu_seconds(stack)
            victims = names[:fail]
            killed = time.time()
            for v in victims:
                stack.kill(f"executor-{v}")
            seconds = await wait_recovered(stack, view, victims, killed, timeout=300)
            cpu_after = cpu_seconds(stack)
        finally:
            await view.stop()
        detection = 3 * stack.heartbeat_interval
        if stages:
            await print_stages(stack.database_url, killed)
            used = {n: cpu_after[n] - cpu_before.get(n, 0.0) for n in cpu_after}
            print("    CPU seconds from the kill to the end, by process: "
                  + ", ".join(f"{n} {v:.2f}" for n, v in sorted(used.items(), key=lambda kv: -kv[1])))
        return seconds, seconds is not None, detection
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--fail", type=int, default=1, help="hosts killed at once")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval (3 misses = detection)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--stages", action="store_true", help="print when each audit kind first/last happened")
    args = ap.parse_args()
    os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
    print(f"{args.fail} of {args.hosts} hosts fail at once; heartbeat {args.heartbeat}s")
    print(f"{'VMs on failed host':>18} {'run':>4} {'recovered (s)':>14} {'detection timeout (s)':>22} {'ratio':>6} ok")
    for vms in args.vms:
        for r in range(args.repeat):
            seconds, ok, detection = asyncio.run(one(vms, args.hosts, args.fail, args.heartbeat, args.stages))
            ratio = f"{seconds / detection:.2f}" if seconds is not None else "-"
            shown = f"{seconds:.2f}" if seconds is not None else "timeout"
            print(f"{vms:>18} {r + 1:>4} {shown:>14} {detection:>22.1f} {ratio:>6} {ok}")


if __name__ == "__main__":
    main()
