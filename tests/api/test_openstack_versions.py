"""Microversion headers and the evacuate body per microversion, as plain functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.api.masakari import MASAKARI
from services.api.masakari_notifications import status_of
from services.api.nova import NOVA, check_evacuate
from services.api.openstack_common import Fault


@pytest.mark.parametrize("headers, version", [
    ({}, (2, 1)),
    ({"x-openstack-nova-api-version": "2.60"}, (2, 60)),
    ({"openstack-api-version": "compute 2.29"}, (2, 29)),
    ({"openstack-api-version": "compute 2.29", "x-openstack-nova-api-version": "2.60"}, (2, 29)),
    ({"openstack-api-version": "volume 3.5, compute 2.70"}, (2, 70)),
    ({"openstack-api-version": "volume 3.5"}, (2, 1)),
    ({"openstack-api-version": "compute latest"}, (2, 95)),
])
def test_nova_microversion(headers: dict[str, str], version: tuple[int, int]) -> None:
    assert NOVA.parse(headers) == version


@pytest.mark.parametrize("asked, status", [("2.96", 406), ("3.0", 406), ("2.0", 406), ("2", 400), ("x.y", 400)])
def test_nova_microversion_refused(asked: str, status: int) -> None:
    with pytest.raises(Fault) as err:
        NOVA.parse({"x-openstack-nova-api-version": asked})
    assert err.value.status == status and asked in err.value.message


def test_response_headers() -> None:
    assert NOVA.response_headers((2, 53)) == {
        "OpenStack-API-Version": "compute 2.53", "X-OpenStack-Nova-API-Version": "2.53",
        "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}
    assert MASAKARI.response_headers((1, 2)) == {"OpenStack-API-Version": "instance-ha 1.2",
                                                 "Vary": "OpenStack-API-Version"}
    assert MASAKARI.parse({"openstack-api-version": "instance-ha latest"}) == (1, 2)


@pytest.mark.parametrize("body, version, error", [
    ({"host": "h2"}, (2, 13), "'onSharedStorage' is a required property"),
    ({"onSharedStorage": "True"}, (2, 13), None),
    ({"onSharedStorage": "maybe"}, (2, 13), "onSharedStorage"),
    ({"onSharedStorage": True}, (2, 14), "'onSharedStorage' was unexpected"),
    ({"host": "h2", "force": True}, (2, 29), None),
    ({"host": "h2", "force": True}, (2, 67), None),
    ({"host": "h2", "force": True}, (2, 68), "'force' was unexpected"),
    ({"force": False}, (2, 30), None),
    ({"force": True}, (2, 30), "non-provided destination"),
    ({"adminPass": "x"}, (2, 95), "can't be changed on existing disk"),
    ({}, (2, 95), None),
    ({"host": ""}, (2, 95), "host"),
    ({"host": "a b"}, (2, 95), "host"),
])
def test_evacuate_body_per_microversion(body: dict[str, object], version: tuple[int, int], error: str | None) -> None:
    if error is None:
        check_evacuate(body, version)
        return
    with pytest.raises(Fault) as err:
        check_evacuate(body, version)
    assert err.value.status == 400 and error in err.value.message


def _row(status: str, host_state: str | None, since_s: float | None, evac: str | None = None) -> dict[str, object]:
    created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    return {"status": status, "evacuation_status": evac, "host_state": host_state, "created_at": created,
            "host_state_since": None if since_s is None else created + timedelta(seconds=since_s)}


@pytest.mark.parametrize(("row", "want"), [
    (_row("ignored", "up", None), "ignored"),                 # recorded at intake (STARTED, INSTANCE, ...)
    (_row("new", "up", -60), "new"),                          # not judged yet
    (_row("new", "suspect", 0.1), "running"),
    (_row("new", "up", 1.5), "ignored"),                      # heartbeats resumed after the report
    (_row("new", "down", 2, "running"), "running"),
    (_row("new", "down", 2, "completed"), "finished"),
    (_row("new", "up", 30, "completed"), "finished"),         # evacuated, then back: the outcome stays
])
def test_notification_status_follows_the_host(row: dict[str, object], want: str) -> None:
    assert status_of(row) == want  # type: ignore[arg-type]
