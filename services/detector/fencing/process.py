"""The `process` fence for simulated hosts: SIGKILL the host's executor process group
(its test-driver guests live inside it) and confirm it is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from services.detector.fencing import FenceOutcome


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")  # a zombie runs nothing any more
    except (FileNotFoundError, IndexError):
        return False


class ProcessFencer:
    name = "process"

    def __init__(self, confirm_timeout: float = 5.0) -> None:
        self.confirm_timeout = confirm_timeout

    async def fence(self, host: str, target: str) -> FenceOutcome:
        try:
            pid = int(target)
        except ValueError:
            return FenceOutcome(False, f"process fence of {host}: target {target!r} is not a pid")
        if pid <= 1:
            return FenceOutcome(False, f"process fence of {host}: refusing pid {pid}")
        if not _alive(pid):
            return FenceOutcome(True, f"process {pid} of {host} is already gone")
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return FenceOutcome(True, f"process {pid} of {host} is already gone")
        except PermissionError as exc:
            return FenceOutcome(False, f"process fence of {host}: cannot kill {pid}: {exc}")
        deadline = time.monotonic() + self.confirm_timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return FenceOutcome(True, f"killed process {pid} of {host}")
            await asyncio.sleep(0.02)
        return FenceOutcome(False, f"process {pid} of {host} still alive {self.confirm_timeout}s after SIGKILL")
