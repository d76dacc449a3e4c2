"""The `ipmi` fence: power the host off through its BMC with ipmitool.

The host's fence target is the BMC address: ``bmc``, ``bmc:623``, ``[fd00::1]:623``
(an ``ipmi://`` prefix is accepted). The fence runs ``ipmitool -I lanplus -H <bmc>
-U <user> -E chassis power off``, then ``chassis power status`` until it prints
``Chassis Power is off``: only that reading is proof. The password goes to ipmitool in
its environment (``IPMI_PASSWORD`` with ``-E``), never on the command line where every
local user could read it. ipmitool runs without a shell; a failure — ipmitool missing, a
non-zero exit, a host that never reads off within the time limit — is a failed
FenceOutcome quoting ipmitool's error; the fence never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable

from services.detector.fencing import FenceOutcome

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.\-]+)?$")


class _Failed(Exception):
    pass


def _no_password() -> str:
    return ""


def parse_target(target: str) -> tuple[str, int | None]:
    """(BMC host, port or None) of an ipmi fence target; ValueError if it is not one."""
    text = target.strip()
    if text.startswith("ipmi://"):
        text = text[len("ipmi://"):].rstrip("/")
    if not text:
        raise ValueError("no fence target: the host's heartbeat names no BMC address (EVACUATE_FENCE_TARGET)")
    port: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not _IPV6.match(host) or (rest and not rest.startswith(":")):
            raise ValueError(f"fence target {target!r} is not a BMC address ([v6addr] or [v6addr]:port)")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1 and _IPV6.match(text):
        host = text  # a bare IPv6 address
    else:
        host = text
    if not (_HOST.match(host) or _IPV6.match(host)):
        # no leading '-': the target comes from a heartbeat and must never become an ipmitool option
        raise ValueError(f"fence target {target!r} is not a BMC host name or address")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"fence target {target!r}: bad port {port!r}")
    return host, int(port)


class IpmiFencer:
    name = "ipmi"

    def __init__(
        self,
        username: str = "",
        password: Callable[[], str] = _no_password,
        *,
        ipmitool: str = "ipmitool",
        interface: str = "lanplus",
        request_timeout: float = 10.0,
        confirm_timeout: float = 25.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.username = username
        self.password = password
        self.ipmitool = ipmitool
        self.interface = interface
        self.request_timeout = request_timeout
        self.confirm_timeout = confirm_timeout
        self.poll_interval = poll_interval

    async def fence(self, host: str, target: str) -> FenceOutcome:
        try:
            reason = await self._fence(target, time.monotonic() + self.confirm_timeout)
            return FenceOutcome(True, f"{host}: {reason}")
        except (_Failed, ValueError, OSError) as exc:
            return FenceOutcome(False, f"ipmi fence of {host} failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a fence reports, it never raises
            return FenceOutcome(False, f"ipmi fence of {host} failed: {type(exc).__name__}: {exc}")

    async def _fence(self, target: str, deadline: float) -> str:
        bmc, port = parse_target(target)
        exe = shutil.which(self.ipmitool)
        if exe is None:
            raise _Failed("ipmitool is not installed" + (f" ({self.ipmitool!r} not found)"
                                                         if self.ipmitool != "ipmitool" else ""))
        base = [exe, "-I", self.interface, "-H", bmc]
        if port is not None:
            base += ["-p", str(port)]
        if self.username:
            base += ["-U", self.username]
        env = dict(os.environ)
        env.pop("IPMI_PASSWORD", None)
        password = self.password()
        if password:
            base.append("-E")
            env["IPMI_PASSWORD"] = password
        where = bmc if port is None else f"{bmc}:{port}"
        start = time.monotonic()
        await self._run(base + ["chassis", "power", "off"], env, deadline, f"chassis power off on {where}")
        last, error = "none", ""
        while True:
            try:
                out = await self._run(base + ["chassis", "power", "status"], env, deadline,
                                      f"chassis power status on {where}")
                lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("Chassis Power is")]
                line = lines[0] if lines else out.strip()
                if line == "Chassis Power is off":
                    return (f"powered off via IPMI chassis power off: {where} reports "
                            f"'Chassis Power is off' after {time.monotonic() - start:.1f} s")
                last, error = line, ""
            except _Failed as exc:
                error = str(exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                break
            await asyncio.sleep(min(self.poll_interval, remaining - 0.05))
        raise _Failed(f"chassis power off accepted but {where} did not report 'Chassis Power is off' "
                      f"within {self.confirm_timeout:g} s (last: {last!r}{'; then ' + error if error else ''})")

    async def _run(self, argv: list[str], env: dict[str, str], deadline: float, what: str) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed(f"{what}: no time left of the {self.confirm_timeout:g} s fence limit")
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        limit = min(self.request_timeout, remaining)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise _Failed(f"ipmitool {what} timed out after {limit:.1f} s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip() or out.decode(errors="replace").strip() or "no output"
            raise _Failed(f"ipmitool {what} failed (exit {proc.returncode}): {detail}")
        return out.decode(errors="replace")
