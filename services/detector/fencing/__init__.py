"""Fence drivers behind one protocol: make sure a host can no longer run its VMs.

``fence(host, target) -> FenceOutcome``; the detector calls the driver named in the
host's record and feeds the outcome back into the failure detector as a FenceResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class FenceOutcome:
    ok: bool
    reason: str


class Fencer(Protocol):
    name: str

    async def fence(self, host: str, target: str) -> FenceOutcome: ...


def registry(settings: object | None = None) -> dict[str, Fencer]:
    """Every fence driver this detector can use, by name. ``manual`` has none: it waits
    for an operator's confirmation."""
    from services.detector.fd_model import Timings
    from services.detector.fencing.ipmi import IpmiFencer
    from services.detector.fencing.process import ProcessFencer
    from services.detector.fencing.redfish import RedfishFencer

    def opt(name: str, default: Any) -> Any:
        """A DetectorSettings field (read by name: this package stays free of pydantic)."""
        return getattr(settings, name, default)

    def password() -> str:
        """Read at each fence, so a rotated password file needs no restart."""
        path = opt("fence_password_file", "")
        if path:
            with open(path) as f:
                return f.read().strip()
        secret = opt("fence_password", "")
        return str(secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret)

    # A result arriving after the core's fence timeout counts for nothing: finish before it.
    profile = Timings.aggressive() if opt("profile", "production") == "aggressive" else Timings.production()
    confirm = max(0.5, min(float(opt("fence_confirm_timeout", 25.0)), profile.fence_timeout - 1.0))
    request_timeout = float(opt("fence_request_timeout", 10.0))
    poll = float(opt("fence_poll_interval", 1.0))
    username = str(opt("fence_username", ""))
    return {
        "process": ProcessFencer(),
        "redfish": RedfishFencer(username, password, verify_tls=bool(opt("fence_verify_tls", True)),
                                 ca_file=str(opt("fence_ca_file", "")), request_timeout=request_timeout,
                                 confirm_timeout=confirm, poll_interval=poll),
        "ipmi": IpmiFencer(username, password, ipmitool=str(opt("fence_ipmitool", "ipmitool")),
                           interface=str(opt("fence_ipmi_interface", "lanplus")), request_timeout=request_timeout,
                           confirm_timeout=confirm, poll_interval=poll),
    }
