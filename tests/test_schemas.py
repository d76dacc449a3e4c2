"""The message schemas: round trip, envelope, version handling, schema fingerprints."""

from __future__ import annotations

import hashlib
import json

import pytest

from services.common.errors import BadMessage
from services.common.schemas import (
    MESSAGE_TYPES,
    TOPICS,
    EvacuationRequested,
    NodeDown,
    RebuildResult,
    Step,
    Topic,
    decode,
    encode,
    wrap,
)

# sha256 of each model's JSON schema, with its version. A schema change without a
# version bump fails here: bump VERSION, then update the fingerprint.
FINGERPRINTS_FILE = "tests/schema_fingerprints.json"


def fingerprint(cls: type) -> str:
    schema = json.dumps(cls.model_json_schema(), sort_keys=True)  # type: ignore[attr-defined]
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


def test_round_trip_every_type() -> None:
    msg = RebuildResult(order_id="o", evacuation_id="e", item_id="i", instance_uuid="u", host="h2", attempt=1,
                        ok=True, steps=(Step(name="define", ok=True, seconds=0.01),))
    env, back = decode(encode(wrap(msg, "test")))
    assert back == msg and env.type == "RebuildResult" and env.version == 1 and env.source == "test"


def test_keys_keep_per_entity_order() -> None:
    assert NodeDown(host="h1", reason="x", fenced_by="process").key() == "h1"
    assert EvacuationRequested(host="h7").key() == "h7"


def raw_envelope(type_: str, version: int, data: object, id_: str = "7d3c1f7e-0b7e-4a59-9a53-0d3f4b1f2a10") -> bytes:
    return json.dumps({"type": type_, "version": version, "id": id_, "at": "2026-01-01T00:00:00Z",
                       "source": "x", "data": data}).encode()


@pytest.mark.parametrize("raw, reason", [
    (b"not json at all", "not JSON"),
    (raw_envelope("Nope", 1, {}), "unknown message type 'Nope'"),
    (raw_envelope("NodeDown", 2, {}), "NodeDown version 2 is not supported"),
    (raw_envelope("NodeDown", 0, {}), "NodeDown version 0 is not supported"),
    (raw_envelope("NodeDown", 1, {"host": 5}), "NodeDown fails its schema"),
    (b'{"type": "NodeDown"}', "bad envelope"),
    (raw_envelope("NodeDown", 1, {}, id_="42"), "bad envelope: id: .*'42' is not a UUID"),
    (None, "empty message"),
])
def test_bad_messages_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        decode(raw)


def test_topic_catalogue_is_derived_from_the_models() -> None:
    assert set(TOPICS[Topic.HOST_EVENTS]) == {"HostSuspect", "NodeDown", "NodeUp", "HostIsolated", "FenceFailed"}
    assert set(TOPICS[Topic.HEARTBEATS]) == {"HostHeartbeat", "InstanceReport", "HostCommand", "CleanupResult"}
    assert "RebuildOrder" in TOPICS[Topic.ORDERS]
    assert sum(len(v) for v in TOPICS.values()) == len(MESSAGE_TYPES)


def test_schema_change_needs_a_version_bump() -> None:
    with open(FINGERPRINTS_FILE) as f:
        recorded = json.load(f)
    current = {name: {"version": cls.VERSION, "schema": fingerprint(cls)} for name, cls in MESSAGE_TYPES.items()}
    for name, now in current.items():
        before = recorded.get(name)
        assert before is not None, f"{name} is new: add it to {FINGERPRINTS_FILE}"
        if before["schema"] != now["schema"]:
            assert now["version"] > before["version"], (
                f"{name}'s JSON schema changed but its VERSION is still {now['version']}: bump it and update "
                f"{FINGERPRINTS_FILE}")


def test_an_older_version_still_reads() -> None:
    """RebuildOrder 2 added the shared-storage config drive; a version-1 order (no such
    fields) from a not yet upgraded templater is read with the defaults."""
    order = {"order_id": "o", "evacuation_id": "e", "item_id": "i", "source": "h1", "target": "h2",
             "instance_uuid": "u", "instance_name": "vm", "attempt": 1, "xml": "<domain/>", "power_state": "running"}
    env, msg = decode(raw_envelope("RebuildOrder", 1, order))
    assert env.version == 1 and msg.config_drive_path is None  # type: ignore[attr-defined]
