"""The whole system on one machine: the broker and PostgreSQL (embedded when none is
configured), the control-plane services as OS processes, and simulated compute hosts
(one executor process each). Used by `evacctl demo`, the process tests and benches."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.common.bus import ensure_topics
from services.common.db import migrate
from services.common.embedded import EmbeddedBroker, EmbeddedPostgres, default_data_dir, free_port
from services.evacctl.simcluster import SimVM, plan_vms, write_node


def with_database(url: str, name: str) -> str:
    """The same server URL with another database (works for TCP and unix-socket URLs)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


SERVICES = ("detector", "planner", "templater", "api")


@dataclass
class Stack:
    workdir: Path
    kafka_bootstrap: str = field(default_factory=lambda: os.environ.get("EVACUATE_KAFKA_BOOTSTRAP", ""))
    database_url: str = field(default_factory=lambda: os.environ.get("EVACUATE_DATABASE_URL", ""))
    heartbeat_interval: float = 0.5
    postgres_dir: Path | None = None  # the embedded PostgreSQL's data (default: the user's data dir)
    profile: str = "aggressive"
    extra_env: dict[str, str] = field(default_factory=dict)
    fresh_database: bool = False  # create (and at stop drop) a database of its own on the server
    broker_host: str = "127.0.0.1"  # the embedded broker's address (another local one: reachable from a netns)
    _created_db: str = ""
    _admin_url: str = ""
    broker: EmbeddedBroker | None = None
    postgres: EmbeddedPostgres | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    vms: dict[str, list[SimVM]] = field(default_factory=dict)
    host_env: dict[str, dict[str, str]] = field(default_factory=dict)
    host_size: dict[str, tuple[int, int]] = field(default_factory=dict)  # memory MiB and cpus per host
    api_port: int = field(default_factory=lambda: int(os.environ.get("EVACUATE_API_PORT") or free_port()))
    api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # admin token of this stack's API

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def shared_dir(self) -> Path:
        return self.workdir / "shared"

    def start_infra(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if not self.kafka_bootstrap:
            self.broker = EmbeddedBroker(host=self.broker_host).start()
            self.kafka_bootstrap = self.broker.bootstrap
        if not self.database_url:
            self.postgres = EmbeddedPostgres(self.postgres_dir or default_data_dir() / "pgdata").start()
            self.database_url = self.postgres.url
        asyncio.run(self._prepare())

    async def _prepare(self) -> None:
        if self.fresh_database:
            name = f"evacuate_run_{uuid.uuid4().hex[:10]}"
            await admin_sql(self.database_url, f'CREATE DATABASE "{name}"')
            self._admin_url, self._created_db = self.database_url, name
            self.database_url = with_database(self.database_url, name)
        await migrate(self.database_url)
        await ensure_topics(self.kafka_bootstrap)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "EVACUATE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "EVACUATE_DATABASE_URL": self.database_url,
            "EVACUATE_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            "EVACUATE_PROFILE": self.profile,
            "EVACUATE_FETCH_MAX_WAIT_MS": env.get("EVACUATE_FETCH_MAX_WAIT_MS", "10"),
            "EVACUATE_SHARED_STORAGE": str(self.shared_dir),
            "EVACUATE_API_PORT": str(self.api_port),
            "EVACUATE_API_TOKENS": env.get("EVACUATE_API_TOKENS") or f"admin:{self.api_token}",
            # JSON lines unless asked otherwise: tests and tracebacks() read the logs back.
            "EVACUATE_LOG_FORMAT": env.get("EVACUATE_LOG_FORMAT") or "json",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update(extra)
        return env

    def spawn(self, name: str, module: str, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen([sys.executable, "-m", module], env=self.env(**extra), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_services(self) -> None:
        for name in SERVICES:
            self.spawn(name, f"services.{name}")

    def add_host(self, index: int, name: str, vm_count: int = 10, shutoff: int = 2, local: int = 1,
                 memory_mib: int = 65536, cpus: int = 32, env: dict[str, str] | None = None) -> None:
        """A simulated host and its executor; ``env`` adds to (or overrides) that executor's
        environment, also when it is restarted or revived."""
        vms = plan_vms(index, name, vm_count, shutoff=shutoff, local=local)
        write_node(self.workdir / "nodes" / f"{name}.xml", vms, self.shared_dir,
                   self.workdir / "local" / name, memory_mib=memory_mib, cpus=cpus)
        self.vms[name] = vms
        self.host_size[name] = (memory_mib, cpus)
        self.host_env[name] = dict(env or {})
        self.spawn(f"executor-{name}", "services.executor", **self._extra_of(f"executor-{name}"))

    def restart_postgres(self, down: float = 0.0) -> float:
        """Stop the embedded PostgreSQL (fast shutdown: every connection is cut) and start
        it again on the same data after `down` seconds. Returns the time it is back."""
        if self.postgres is None:
            raise RuntimeError("only an embedded PostgreSQL can be restarted by the stack")
        self.postgres.stop()
        time.sleep(down)
        self.postgres.start()
        return time.time()

    def restart_broker(self, down: float = 0.0) -> float:
        """Stop the embedded broker (it loses every topic, message and committed offset)
        and start a new one on the same address after `down` seconds. Returns the time
        it is back."""
        if self.broker is None:
            raise RuntimeError("only an embedded broker can be restarted by the stack")
        if self.broker.proc is not None and self.broker.proc.poll() is None:
            self.broker.proc.kill()  # a crash: nothing is flushed (memory storage keeps nothing anyway)
            self.broker.proc.wait()
        time.sleep(down)
        self.broker.start()
        return time.time()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        """Kill a process (group): a simulated host dies with its executor. Returns when."""
        proc = self.procs[name]
        t = time.time()
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait()
        return t

    def revive_host(self, name: str) -> None:
        """Bring a killed simulated host back as after a power cycle: its domains are all
        still defined (stale copies) but none runs (HA domains have autostart off)."""
        vms = [replace(vm, running=False) for vm in self.vms[name]]
        memory_mib, cpus = self.host_size.get(name, (65536, 32))
        write_node(self.workdir / "nodes" / f"{name}.xml", vms, self.shared_dir, self.workdir / "local" / name,
                   memory_mib=memory_mib, cpus=cpus)
        self.restart(f"executor-{name}")

    def restart(self, name: str) -> None:
        module = "services.executor" if name.startswith("executor-") else f"services.{name}"
        self.spawn(name, module, **self._extra_of(name))

    def _extra_of(self, name: str) -> dict[str, str]:
        if not name.startswith("executor-"):
            return {}
        return self.executor_env(name.removeprefix("executor-"))

    def executor_env(self, host: str) -> dict[str, str]:
        """The environment a simulated host's executor gets on top of ``env()``."""
        uri = f"test://{(self.workdir / 'nodes' / f'{host}.xml').resolve()}"
        # A compute host holds no database credentials and no API tokens (DESIGN §1).
        return {"EVACUATE_HOST": host, "EVACUATE_LIBVIRT_URI": uri, "EVACUATE_FENCE_DRIVER": "process",
                "EVACUATE_DATABASE_URL": "", "EVACUATE_API_TOKENS": "", **self.host_env.get(host, {})}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()
        try:
            if self._created_db:
                drop = admin_sql(self._admin_url, f'DROP DATABASE IF EXISTS "{self._created_db}" WITH (FORCE)')
                with ThreadPoolExecutor(1) as pool:  # stop() may be called from inside an event loop
                    try:
                        pool.submit(asyncio.run, drop).result()
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        print(f"stack: could not drop database {self._created_db}: {exc!r}", file=sys.stderr)
                self._created_db = ""
        finally:
            if self.broker:
                self.broker.stop()
            if self.postgres:
                self.postgres.stop()

    def tracebacks(self) -> list[str]:
        """Log lines of this stack's services that carry an error with a traceback (JSON or text logs)."""
        out = []
        for p in sorted((self.workdir / "logs").glob("*.log")):
            after_error = False
            for line in p.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    if '"level": "ERROR"' in line and "Traceback" in line:
                        out.append(f"{p.name}: {line[:300]}")
                elif line.startswith("Traceback (most recent call last)"):
                    if after_error:
                        out.append(f"{p.name}: {line[:300]}")
                elif line and not line.startswith(" "):
                    after_error = " ERROR " in line
        return out

    def dead_services(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]
