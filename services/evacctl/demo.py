"""`evacctl demo`: the whole system on embedded defaults, three simulated hosts with ten
VMs each; one host is killed and its evacuation is shown as it happens. Exits 0 only if
every evacuable VM of the failed host runs (or, if it was off, is defined) elsewhere."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table

from services.common.schemas import PowerState
from services.evacctl.observe import ClusterView
from services.evacctl.stack import Stack

console = Console(highlight=False)


@dataclass
class Outcome:
    ok: bool
    seconds: float | None
    rows: list[tuple[str, str, str, str, str, str]]


async def wait_ready(stack: Stack, view: ClusterView, hosts: int, vms: int, timeout: float = 60) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = await conn.fetchval("SELECT count(*) FROM hosts WHERE state = 'up'")
            known = await conn.fetchval("SELECT count(*) FROM instances WHERE present")
            if up >= hosts and known >= vms and len(view.reports) >= hosts:
                return
            dead = stack.dead_services()
            if dead:
                raise RuntimeError(f"service(s) exited during start: {', '.join(dead)} (see {stack.workdir}/logs)")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"cluster not ready after {timeout}s: {up} hosts up, {known} instances known")
    finally:
        await conn.close()


def expected(vm_running: bool) -> PowerState:
    return PowerState.RUNNING if vm_running else PowerState.SHUTOFF


async def follow(stack: Stack, view: ClusterView, victim: str, killed_at: float, timeout: float,
                 live: bool = True) -> Outcome:
    """Print audit lines as they come; end when every evacuable VM is seen elsewhere in
    its old power state (by the executors' own reports) and the evacuation is closed."""
    conn = await asyncpg.connect(stack.database_url)
    last_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit WHERE at < to_timestamp($1)", killed_at)
    vms = stack.vms[victim]
    done_at: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for r in await conn.fetch("SELECT * FROM audit WHERE id > $1 ORDER BY id", last_id):
                last_id = r["id"]
                if live:
                    console.print(f"[dim]+{r['at'].timestamp() - killed_at:6.2f}s[/dim] [bold]{r['kind']:<18}[/bold]"
                                  f" {r['host'] or ''}: {r['detail']}")
            placed = [vm for vm in vms if vm.shared and any(
                d.power_state == expected(vm.running) for _, d in view.where(vm.uuid, {victim}))]
            closed = await conn.fetchval(
                "SELECT count(*) FROM evacuations WHERE source=$1 AND status <> 'running' AND created_at >="
                " to_timestamp($2)", victim, killed_at)
            if len(placed) == sum(vm.shared for vm in vms) and done_at is None:
                done_at = max(view.report_time.get(h, time.time()) for h in view.reports)
            if done_at is not None and closed:
                break
            await asyncio.sleep(0.05)
        rows = []
        ok = done_at is not None
        for vm in vms:
            seen = view.where(vm.uuid, {victim})
            new_host = ", ".join(h for h, _ in seen) or "-"
            state = ", ".join(str(d.power_state) for _, d in seen) or "-"
            item = await conn.fetchrow(
                "SELECT status, reason FROM evacuation_items WHERE instance_uuid=$1 ORDER BY created_at DESC LIMIT 1",
                __import__("uuid").UUID(vm.uuid))
            note = (item["reason"] if item and item["status"] != "done" else "") or ""
            if vm.shared and (len(seen) != 1 or seen[0][1].power_state != expected(vm.running)):
                ok = False
                note = note or "not rebuilt"
            rows.append((vm.name, victim, new_host, str(expected(vm.running)), state,
                         note if not vm.shared else (item["status"] if item else "-")))
        return Outcome(ok, None if done_at is None else done_at - killed_at, rows)
    finally:
        await conn.close()


async def run_demo(workdir: Path, hosts: int = 3, vms_per_host: int = 10, timeout: float = 60.0) -> int:
    stack = Stack(workdir, fresh_database=True)
    console.print("[bold]Evacuate demo[/bold]: starting the broker, PostgreSQL and the services ...")
    try:
        await asyncio.to_thread(stack.start_infra)
        console.print(f"  broker {stack.kafka_bootstrap} ({'embedded tansu' if stack.broker else 'configured'}),"
                      f" PostgreSQL {'embedded' if stack.postgres else 'configured'}; logs in {workdir}/logs")
        stack.start_services()
        names = [f"h{i}" for i in range(1, hosts + 1)]
        for i, h in enumerate(names, 1):
            stack.add_host(i, h, vm_count=vms_per_host)
        view = ClusterView(stack.kafka_bootstrap)
        await view.start()
        try:
            await wait_ready(stack, view, hosts, hosts * vms_per_host)
            console.print(f"  {hosts} hosts up with {vms_per_host} VMs each"
                          " (per host: 2 powered off, 1 on a host-local disk)")
            victim = names[0]
            await asyncio.sleep(1.0)
            killed_at = stack.kill(f"executor-{victim}")
            console.print(f"\n[bold red]SIGKILL[/bold red] the executor of {victim} (its VMs die with it)\n")
            out = await follow(stack, view, victim, killed_at, timeout)
        finally:
            await view.stop()
        table = Table(title=f"VMs of {victim}")
        for col in ("VM", "old host", "new host", "power before", "power after", "evacuation"):
            table.add_column(col)
        for row in out.rows:
            table.add_row(*row)
        console.print(table)
        if out.ok and out.seconds is not None:
            console.print(f"[bold green]OK[/bold green]: every evacuable VM runs elsewhere;"
                          f" {out.seconds:.2f} s from the kill to the last VM running")
            return 0
        console.print("[bold red]FAILED[/bold red]: not every evacuable VM was rebuilt (see the table and logs)")
        return 1
    finally:
        stack.stop()


def main(keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="evacuate-demo-"))
    try:
        return asyncio.run(run_demo(workdir))
    except KeyboardInterrupt:
        console.print("interrupted; everything stopped")
        return 130
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
