"""The OpenStack front doors, as app.py includes them: the Nova subset under /compute,
the Masakari intake under /instance-ha, their fault handler, and a last route per prefix
that answers unknown paths in the OpenStack error shape."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import masakari, masakari_notifications, nova, nova_services
from services.api.openstack_common import Fault, catch_all, on_fault

__all__ = ["ROUTERS", "Fault", "on_fault"]

_nova_rest = APIRouter(prefix="/compute")
catch_all(_nova_rest, "The compute API")
_masakari_rest = APIRouter(prefix="/instance-ha")
catch_all(_masakari_rest, "The instance-ha API")

ROUTERS: tuple[APIRouter, ...] = (
    nova.root, nova.router, nova_services.router, _nova_rest,
    masakari.root, masakari.router, masakari_notifications.router, _masakari_rest,
)
