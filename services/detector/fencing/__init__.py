"""Fence drivers behind one protocol: make sure a host can no longer run its VMs.

``fence(host, target) -> FenceOutcome``; the detector calls the driver named in the
host's record and feeds the outcome back into the failure detector as a FenceResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    from services.detector.fencing.process import ProcessFencer

    return {"process": ProcessFencer()}
