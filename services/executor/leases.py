"""Storage leases (DESIGN §4): one file per HA VM on shared storage naming the host
that runs it and when it last renewed. A host refuses to start a VM whose lease
another host renewed within the lease timeout.

Taking a lease is atomic: the check-and-take (and every renewal) runs under an
exclusive ``flock`` on a per-VM lock file, and the lease itself is replaced by rename.
The kernel drops the lock when its taker dies, so a crashed taker never leaves a lock
that must be broken by age (breaking a lock by age lets two racers both win).

A lease's time is its file's modification time: a renewal (every heartbeat, for every VM
running on the host) only sets it with ``utime`` under the lock, which touches one inode
and not the directory — a rename per VM per heartbeat kept a shared directory busy enough
to slow the rebuilds of an evacuation down by tens of milliseconds each.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LeaseHeld:
    holder: str
    age: float


class LeaseBusy(Exception):
    """The lock of a lease stayed taken for the whole wait."""


class LeaseStore:
    def __init__(self, shared_storage: str, host: str, timeout: float, lock_wait: float = 5.0) -> None:
        self.dir = Path(shared_storage) / ".evacuate" / "leases"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.timeout = timeout
        self.lock_wait = lock_wait

    def _path(self, uuid: str) -> Path:
        return self.dir / f"{uuid.lower()}.lease"

    def read(self, uuid: str) -> tuple[str, float] | None:
        """(holder, time of the last renewal) or None."""
        try:
            with open(self._path(uuid), "rb") as f:
                renewed = os.fstat(f.fileno()).st_mtime
                data = json.loads(f.read())
            return str(data["holder"]), renewed
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _write(self, uuid: str) -> None:
        tmp = self.dir / f".{uuid.lower()}.{self.host}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"holder": self.host, "renewed_at": time.time()}))
        os.replace(tmp, self._path(uuid))

    @contextmanager
    def _locked(self, uuid: str) -> Iterator[None]:
        # One open file description per call: threads of one process exclude each other too.
        fd = os.open(self.dir / f"{uuid.lower()}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            deadline = time.monotonic() + self.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseBusy(uuid) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # also drops the lock

    def acquire(self, uuid: str, now: float | None = None) -> LeaseHeld | None:
        """Take the lease for this host. Returns None on success, or who holds it."""
        try:
            with self._locked(uuid):
                current = self.read(uuid)
                t = time.time() if now is None else now
                if current is not None:
                    holder, renewed = current
                    if holder != self.host and t - renewed < self.timeout:
                        return LeaseHeld(holder=holder, age=max(0.0, t - renewed))
                self._write(uuid)
                return None
        except LeaseBusy:
            return LeaseHeld(holder=f"(lock of {uuid} held by another taker for {self.lock_wait}s)", age=0.0)

    def renew(self, uuids: list[str]) -> list[LeaseHeld]:
        """Renew the leases this host holds; a lease taken over by another host is not
        touched (returned, so the caller can log it)."""
        lost = []
        for uuid in uuids:
            try:
                with self._locked(uuid):
                    current = self.read(uuid)
                    if current is None:
                        self._write(uuid)
                    elif current[0] == self.host:
                        now = time.time()
                        os.utime(self._path(uuid), (now, now))
                    else:
                        lost.append(LeaseHeld(holder=current[0], age=time.time() - current[1]))
            except LeaseBusy:
                continue  # someone is taking it right now; next round tells
        return lost

    def release(self, uuid: str) -> None:
        try:
            with self._locked(uuid):
                current = self.read(uuid)
                if current is not None and current[0] == self.host:
                    self._path(uuid).unlink(missing_ok=True)
        except LeaseBusy:
            pass
