"""Storage leases (DESIGN §4): one file per HA VM on shared storage naming the host
that runs it and when it last renewed. A host refuses to start a VM whose lease
another host renewed within the lease timeout. Taking a lease is atomic: a lock file
created with O_EXCL serialises the check-and-take, so two racing hosts cannot both win.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LeaseHeld:
    holder: str
    age: float


class LeaseStore:
    def __init__(self, shared_storage: str, host: str, timeout: float) -> None:
        self.dir = Path(shared_storage) / ".evacuate" / "leases"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.timeout = timeout

    def _path(self, uuid: str) -> Path:
        return self.dir / f"{uuid}.lease"

    def read(self, uuid: str) -> tuple[str, float] | None:
        try:
            data = json.loads(self._path(uuid).read_text())
            return str(data["holder"]), float(data["renewed_at"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _write(self, uuid: str) -> None:
        tmp = self.dir / f".{uuid}.{self.host}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"holder": self.host, "renewed_at": time.time()}))
        os.replace(tmp, self._path(uuid))

    def acquire(self, uuid: str, now: float | None = None) -> LeaseHeld | None:
        """Take the lease for this host. Returns None on success, or who holds it."""
        lock = self.dir / f"{uuid}.lock"
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                try:
                    if time.time() - lock.stat().st_mtime > 10.0:  # its taker died holding it
                        lock.unlink(missing_ok=True)
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    return LeaseHeld(holder="(lock held by another taker)", age=0.0)
                time.sleep(0.01)
        try:
            os.write(fd, self.host.encode())
            current = self.read(uuid)
            t = time.time() if now is None else now
            if current is not None:
                holder, renewed = current
                if holder != self.host and t - renewed < self.timeout:
                    return LeaseHeld(holder=holder, age=max(0.0, t - renewed))
            self._write(uuid)
            return None
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)

    def renew(self, uuids: list[str]) -> list[LeaseHeld]:
        """Renew the leases this host holds; a lease taken over by another host is not
        touched (returned, so the caller can log it)."""
        lost = []
        for uuid in uuids:
            current = self.read(uuid)
            if current is None or current[0] == self.host:
                self._write(uuid)
            else:
                lost.append(LeaseHeld(holder=current[0], age=time.time() - current[1]))
        return lost

    def release(self, uuid: str) -> None:
        current = self.read(uuid)
        if current is not None and current[0] == self.host:
            self._path(uuid).unlink(missing_ok=True)
