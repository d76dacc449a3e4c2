"""The detector's fast heartbeat path: what it takes, and what it leaves to the full path."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.common.schemas import HostHeartbeat, encode, wrap
from services.detector.intake import fast_heartbeat


def _raw(**changes: object) -> bytes:
    obj = json.loads(encode(wrap(HostHeartbeat(host="h1", seq=7, fence_target="123"), "executor:h1")))
    obj.update(changes)
    return json.dumps(obj).encode()


def test_a_well_formed_heartbeat_gives_its_sequence_and_send_time() -> None:
    assert fast_heartbeat(_raw())[3:4] == (7,)  # type: ignore[index]  # as the executor encodes it
    raw = _raw(at="2026-11-29T07:30:00.250000+00:00")
    assert fast_heartbeat(raw) == ("h1", "process", "123", 7,
                                   datetime(2026, 11, 29, 7, 30, 0, 250000, tzinfo=UTC).timestamp())


def test_anything_else_takes_the_full_path() -> None:
    assert fast_heartbeat(_raw(at="2026-11-29T07:30:00")) is None       # no time zone
    assert fast_heartbeat(_raw(at="yesterday")) is None
    assert fast_heartbeat(_raw(version=9)) is None
    assert fast_heartbeat(b"not json HostHeartbeat") is None
    assert fast_heartbeat(None) is None
