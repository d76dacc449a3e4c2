"""End-to-end recovery time on the real stack (embedded broker, PostgreSQL, every service a
process, libvirt test driver, aggressive profile: 0.5 s heartbeats, 3 misses, process
fence): SIGKILL a host's executor and time until every one of its evacuable VMs is seen
running (or defined, if it was off) on another host in that host's own InstanceReport.

    .venv/bin/python bench/recovery.py [--vms 10 100] [--hosts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from services.evacctl.demo import follow, wait_ready
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack


async def one(vms: int, hosts: int) -> tuple[float | None, bool, float]:
    workdir = Path(tempfile.mkdtemp(prefix="evacuate-bench-"))
    stack = Stack(workdir, fresh_database=True)
    try:
        await asyncio.to_thread(stack.start_infra)
        stack.start_services()
        names = [f"h{i}" for i in range(1, hosts + 1)]
        for i, h in enumerate(names, 1):
            stack.add_host(i, h, vm_count=vms, shutoff=max(1, vms // 5), local=1, memory_mib=vms * hosts * 1024,
                           cpus=max(32, vms))
        view = ClusterView(stack.kafka_bootstrap)
        await view.start()
        try:
            await wait_ready(stack, view, hosts, hosts * vms, timeout=120)
            await asyncio.sleep(1.0)
            killed = stack.kill("executor-h1")
            out = await follow(stack, view, "h1", killed, timeout=120, live=False)
        finally:
            await view.stop()
        detection = 3 * stack.heartbeat_interval
        return out.seconds, out.ok, detection
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
    print(f"{'VMs on failed host':>18} {'run':>4} {'recovered (s)':>14} {'detection timeout (s)':>22} {'ratio':>6} ok")
    for vms in args.vms:
        for r in range(args.repeat):
            seconds, ok, detection = asyncio.run(one(vms, args.hosts))
            ratio = f"{seconds / detection:.2f}" if seconds is not None else "-"
            shown = f"{seconds:.2f}" if seconds is not None else "timeout"
            print(f"{vms:>18} {r + 1:>4} {shown:>14} {detection:>22.1f} {ratio:>6} {ok}")


if __name__ == "__main__":
    main()
