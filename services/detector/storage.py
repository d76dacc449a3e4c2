"""Storage heartbeats (DESIGN §1, §4): every executor replaces
``<shared>/.evacuate/heartbeats/<host>`` once per heartbeat interval; the detector, which
mounts the same shared storage, scans that directory and reports which hosts' files
changed since its previous scan.

A file is a sign of life only when it changes: an unchanged file is what a dead host
leaves behind. So a scan compares each file's stat signature (inode, mtime, size: an
atomic replace gives a new inode) with the previous scan's and, only for the files
whose signature moved, reads the content to check its (time, seq) moved too. The
first sighting of a file only records it: it proves nothing about now.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUBDIR = Path(".evacuate") / "heartbeats"


def heartbeat_dir(shared_storage: str | os.PathLike[str]) -> Path:
    return Path(shared_storage) / SUBDIR


@dataclass(frozen=True)
class Seen:
    signature: tuple[int, int, int]  # inode, mtime_ns, size
    stamp: tuple[float, int]  # the content's (time, seq)


def read_heartbeat(path: Path) -> tuple[str, float, int] | None:
    """(host, time, seq) of a heartbeat file, or None if it is missing or torn."""
    try:
        data = json.loads(path.read_bytes())
        return str(data["host"]), float(data["time"]), int(data["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StorageHeartbeatWriter:
    """The executor's side: one small file per host, replaced atomically (write a
    temporary file, then rename over the old one), so a reader never sees half a file."""

    def __init__(self, shared_storage: str, host: str) -> None:
        self.dir = heartbeat_dir(shared_storage)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.path = self.dir / host
        self.tmp = self.dir / f".{host}.{socket.gethostname()}.{os.getpid()}.tmp"
        self.seq = 0

    def write(self) -> None:
        self.seq += 1
        payload = json.dumps({"host": self.host, "time": time.time(), "seq": self.seq, "pid": os.getpid()})
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload.encode())
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)


class StorageHeartbeatScanner:
    """The detector's side. `scan()` returns the hosts whose heartbeat file was renewed
    since the previous scan. Blocking (stat and read): run it in a worker thread."""

    def __init__(self, shared_storage: str) -> None:
        self.dir = heartbeat_dir(shared_storage)
        self.seen: dict[str, Seen] = {}
        self._missing_logged = False

    def scan(self) -> list[str]:
        renewed = []
        present = set()
        try:
            entries = os.scandir(self.dir)
        except FileNotFoundError:
            if not self._missing_logged:
                log.info("no storage heartbeats yet: %s does not exist", self.dir)
                self._missing_logged = True
            return []
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue  # a writer's temporary file
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                present.add(name)
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
                old = self.seen.get(name)
                if old is not None and old.signature == sig:
                    continue
                content = read_heartbeat(Path(entry.path))
                if content is None or content[0] != name:
                    continue  # torn, foreign or vanished: look again next scan
                stamp = (content[1], content[2])
                self.seen[name] = Seen(sig, stamp)
                if old is not None and stamp != old.stamp:
                    renewed.append(name)
        for gone in self.seen.keys() - present:
            del self.seen[gone]
        return renewed
