"""The failure detector's plain data: host states, timings, host records, input events
and output effects. Everything here is a frozen value; `fd_step.step` turns one event
into a new state plus effects. Import these names from `failure_detector`.

Times are float seconds on the shell's clock (monotonic or wall, the core does not care
as long as one detector uses one clock). Two instants closer than `EPSILON` count as
equal, so that `13.1 - 11.1 >= 2.0` holds in spite of binary floating point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

EPSILON = 1e-6


class HostState(StrEnum):
    up = "up"
    suspect = "suspect"  # bus heartbeats missing; not yet acted upon
    fencing = "fencing"  # a fence was requested; waiting for proof the host is off
    down = "down"  # proven unable to run its VMs (fenced or self-fenced): evacuated
    isolated = "isolated"  # bus heartbeats gone, storage heartbeat renewed: not evacuated
    maintenance = "maintenance"  # operator-disabled (or quarantined for flapping)
    returning = "returning"  # a down host is back; it destroys its stale copies first


def _check(cond: bool, name: str, value: object, valid: str) -> None:
    if not cond:
        raise ValueError(f"Timings.{name} must be {valid}, got {value!r}")


@dataclass(frozen=True)
class Timings:
    """Detector settings. Defaults are the production profile.

    - A host is suspect once more than `misses_before_suspect` heartbeat intervals passed
      without a bus heartbeat.
    - After `suspect_grace` seconds in suspect it is judged: storage heartbeat still
      renewed after the bus went quiet and fresh (younger than `storage_timeout`) →
      isolated; storage leases expired → down (self-fenced); otherwise → fencing.
    - A fence attempt without a result after `fence_timeout` counts as failed. A failed
      attempt is retried after `fence_retry_backoff`, doubling per attempt and capped at
      `fence_retry_backoff_max`. After `fence_max_attempts` failures no fence is
      requested any more: the host stays `fencing` (never NodeDown without proof) until
      an operator confirms it off or its storage leases expire.
    - Storage leases count as expired once the storage heartbeat is older than
      `storage_timeout + self_fence_grace`.
    - A host returning more than `flap_max` times within `flap_window` seconds is
      quarantined in `maintenance` after its cleanup, until an operator enables it.
    """

    heartbeat_interval: float = 1.0
    misses_before_suspect: int = 3
    suspect_grace: float = 2.0
    fence_timeout: float = 30.0
    fence_retry_backoff: float = 5.0
    fence_retry_backoff_max: float = 60.0
    fence_max_attempts: int = 5
    storage_timeout: float = 10.0
    self_fence_grace: float = 10.0
    flap_window: float = 600.0
    flap_max: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                _check(type(value) is int, f.name, value, "an integer")
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                _check(ok and math.isfinite(value), f.name, value, "a finite number")
        _check(self.heartbeat_interval > 0, "heartbeat_interval", self.heartbeat_interval, "> 0")
        _check(self.misses_before_suspect >= 1, "misses_before_suspect",
               self.misses_before_suspect, ">= 1")
        _check(self.suspect_grace >= 0, "suspect_grace", self.suspect_grace, ">= 0")
        _check(self.fence_timeout > 0, "fence_timeout", self.fence_timeout, "> 0")
        _check(self.fence_retry_backoff > 0, "fence_retry_backoff",
               self.fence_retry_backoff, "> 0")
        _check(self.fence_retry_backoff_max >= self.fence_retry_backoff,
               "fence_retry_backoff_max", self.fence_retry_backoff_max,
               f">= fence_retry_backoff ({self.fence_retry_backoff})")
        _check(self.fence_max_attempts >= 1, "fence_max_attempts",
               self.fence_max_attempts, ">= 1")
        # Storage heartbeats are written once per heartbeat interval: a shorter timeout
        # would call a healthy host's storage heartbeat stale between two writes.
        _check(self.storage_timeout > self.heartbeat_interval, "storage_timeout",
               self.storage_timeout, f"> heartbeat_interval ({self.heartbeat_interval})")
        _check(self.self_fence_grace >= 0, "self_fence_grace", self.self_fence_grace, ">= 0")
        _check(self.flap_window > 0, "flap_window", self.flap_window, "> 0")
        _check(self.flap_max >= 1, "flap_max", self.flap_max, ">= 1")

    @classmethod
    def production(cls) -> Timings:
        return cls()

    @classmethod
    def aggressive(cls) -> Timings:
        """The demo profile: 0.5 s heartbeats, 3 misses, no extra grace anywhere."""
        return cls(
            heartbeat_interval=0.5,
            misses_before_suspect=3,
            suspect_grace=0.0,
            fence_timeout=10.0,
            fence_retry_backoff=1.0,
            fence_retry_backoff_max=8.0,
            fence_max_attempts=5,
            storage_timeout=3.0,
            self_fence_grace=0.0,
            flap_window=60.0,
            flap_max=3,
        )

    @property
    def suspect_after(self) -> float:
        return self.misses_before_suspect * self.heartbeat_interval

    @property
    def lease_expiry(self) -> float:
        return self.storage_timeout + self.self_fence_grace

    def backoff(self, failed_attempts: int) -> float:
        """Delay before the next attempt once `failed_attempts` attempts failed."""
        exponent = min(max(failed_attempts - 1, 0), 32)
        return float(min(self.fence_retry_backoff * 2**exponent, self.fence_retry_backoff_max))


@dataclass(frozen=True)
class HostRecord:
    """One host as the detector sees it. `since` is when it entered `state`.

    `fence_attempts` counts attempts of the current fencing round. While an attempt is in
    flight `fence_deadline` is when it times out and `next_fence_at` is None; after a
    failure `next_fence_at` is when the next attempt is requested. `returns` holds the
    times of recent down → returning changes (within `flap_window`).
    """

    name: str
    state: HostState
    since: float
    last_heartbeat: float | None = None
    last_storage_heartbeat: float | None = None
    fence_attempts: int = 0
    next_fence_at: float | None = None
    reason: str = ""
    fence_driver: str = "process"
    returns: tuple[float, ...] = ()
    fence_deadline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shell stores it in PostgreSQL)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "since": self.since,
            "last_heartbeat": self.last_heartbeat,
            "last_storage_heartbeat": self.last_storage_heartbeat,
            "fence_attempts": self.fence_attempts,
            "next_fence_at": self.next_fence_at,
            "reason": self.reason,
            "fence_driver": self.fence_driver,
            "returns": list(self.returns),
            "fence_deadline": self.fence_deadline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostRecord:
        """Inverse of `to_dict`; raises ValueError naming the bad field."""

        def number(key: str, optional: bool) -> float | None:
            value = data.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"HostRecord.{key} must be a number, got {value!r}")
            return float(value)

        def text(key: str, default: str | None = None) -> str:
            value = data.get(key, default)
            if not isinstance(value, str):
                raise ValueError(f"HostRecord.{key} must be a string, got {value!r}")
            return value

        state_text = text("state")
        try:
            state = HostState(state_text)
        except ValueError:
            valid = ", ".join(s.value for s in HostState)
            raise ValueError(
                f"HostRecord.state must be one of {valid}, got {state_text!r}"
            ) from None
        attempts = data.get("fence_attempts", 0)
        if type(attempts) is not int or attempts < 0:
            raise ValueError(
                f"HostRecord.fence_attempts must be an integer >= 0, got {attempts!r}"
            )
        raw_returns = data.get("returns", [])
        if not isinstance(raw_returns, list | tuple) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in raw_returns
        ):
            raise ValueError(f"HostRecord.returns must be a list of numbers, got {raw_returns!r}")
        since = number("since", optional=False)
        assert since is not None
        return cls(
            name=text("name"),
            state=state,
            since=since,
            last_heartbeat=number("last_heartbeat", optional=True),
            last_storage_heartbeat=number("last_storage_heartbeat", optional=True),
            fence_attempts=attempts,
            next_fence_at=number("next_fence_at", optional=True),
            reason=text("reason", ""),
            fence_driver=text("fence_driver", "process"),
            returns=tuple(float(t) for t in raw_returns),
            fence_deadline=number("fence_deadline", optional=True),
        )


@dataclass(frozen=True)
class DetectorState:
    """All hosts by name. Never mutated: `step` builds a new dict (copy-on-write)."""

    hosts: Mapping[str, HostRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": {name: rec.to_dict() for name, rec in sorted(self.hosts.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorState:
        hosts = data.get("hosts", {})
        if not isinstance(hosts, Mapping):
            raise ValueError(f"DetectorState.hosts must be an object, got {hosts!r}")
        return cls(hosts={str(n): HostRecord.from_dict(r) for n, r in hosts.items()})

    def with_host(self, rec: HostRecord) -> DetectorState:
        return DetectorState(hosts={**self.hosts, rec.name: rec})


# --- input events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """A bus heartbeat. An unknown host is registered `up`. ``at`` is when the detector
    read it (its clock: silences are measured on it); ``sent`` is when the host sent it
    (the host's clock), used only to tell a heartbeat sent before the host went down — a
    duplicate or one re-read after a rebalance — from a host that really came back."""

    host: str
    at: float
    fence_driver: str = "process"
    sent: float | None = None


@dataclass(frozen=True)
class StorageHeartbeat:
    """The host's heartbeat file on shared storage was seen renewed at `at`."""

    host: str
    at: float


@dataclass(frozen=True)
class Tick:
    at: float


@dataclass(frozen=True)
class FenceResult:
    """Outcome of a RequestFence. `attempt` (when the shell knows it) lets a late
    failure of an earlier, already timed-out attempt be told apart from the current one."""

    host: str
    at: float
    ok: bool
    reason: str
    attempt: int | None = None


OperatorCommand = Literal["maintenance", "enable", "confirm_off", "force_down", "suspect"]


@dataclass(frozen=True)
class Operator:
    """maintenance/enable: disable/enable a host. confirm_off: the manual fence, an
    operator confirms the host is off. force_down: evacuate an isolated host anyway.
    suspect: an outside monitor (a Masakari notification) reports the host stopped; an
    up host becomes suspect at once and is judged, as any suspect host (fenced, isolated
    or self-fenced, never evacuated on the report alone), once it has missed
    `REPORTED_MISSES` heartbeats instead of `misses_before_suspect`."""

    host: str
    at: float
    command: OperatorCommand


@dataclass(frozen=True)
class CleanupDone:
    """The returning host's executor destroyed its stale copies."""

    host: str
    at: float


Event = Heartbeat | StorageHeartbeat | Tick | FenceResult | Operator | CleanupDone


# --- output effects -------------------------------------------------------------------

PublishKind = Literal["HostSuspect", "NodeDown", "HostIsolated", "NodeUp", "FenceFailed"]


@dataclass(frozen=True)
class Publish:
    """A host event for `evacuate.host-events`. `fenced_by` is set on NodeDown (a fence
    driver name, "storage-lease" or "operator"); `attempt` on FenceFailed."""

    kind: PublishKind
    host: str
    reason: str
    fenced_by: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class RequestFence:
    host: str
    driver: str
    attempt: int


@dataclass(frozen=True)
class LogLine:
    text: str


Effect = Publish | RequestFence | LogLine
