"""The templater: turns an EvacuationPlan into one RebuildOrder per assignment, keyed by
the target host. An instance with a server template gets its mapped files rendered
with the *target* host's built-ins and delivered on a config drive; an item that fails
to render fails alone (a non-retryable RebuildResult) and the rest of the plan goes on."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from services.common.bus import ConsumeLoop, ConsumerSpec, Producer, broker_watch, ensure_topics
from services.common.db import close_pool, connect_pool
from services.common.domain_xml import parse_domain
from services.common.errors import RebuildError
from services.common.runtime import gather_forever, require_infra, retry_start
from services.common.schemas import (
    Assignment,
    Envelope,
    EvacuationPlan,
    Message,
    RebuildOrder,
    RebuildResult,
    Step,
    Topic,
    encode,
    wrap,
)
from services.common.settings import TemplaterSettings
from services.templater.configdrive import build_config_drive
from services.templater.template import TemplateError, parse, render, validate_values

log = logging.getLogger("services.templater")
SOURCE = "templater"
# An order (its JSON envelope) must stay under the producer's max_request_size (aiokafka's
# default, 1 MiB) with room for the record's own overhead.
MAX_ORDER_BYTES = 1_000_000


def order_id(item_id: str, attempt: int) -> str:
    return str(uuid.uuid5(uuid.UUID(item_id), f"attempt-{attempt}"))


def builtins_for(a: Assignment) -> dict[str, str]:
    facts = parse_domain(a.xml, "/")
    ips = [n.ip for n in facts.nics if n.ip]
    return {
        "IP_ADDRESS": ips[0] if ips else "",
        "IP_ADDRESSES": ",".join(ips),
        "MAC_ADDRESS": facts.nics[0].mac if facts.nics else "",
        "HOSTNAME": a.metadata.get("hostname", facts.name),
        "INSTANCE_UUID": facts.uuid,
        "INSTANCE_NAME": facts.name,
        "HOST": a.target,
    }


def config_drive_for(a: Assignment, text: str, bodies: Mapping[str, str]) -> bytes:
    """Render the template for this assignment; raises TemplateError."""
    if not isinstance(bodies, Mapping):
        raise ValueError(f"the template's bodies are a {type(bodies).__name__}, not a map of guest path to text")
    template = parse(text)
    builtins = builtins_for(a)
    user = {k: v for k, v in a.metadata.items() if k != "hostname"}
    files = render(template, bodies, builtins, validate_values(template, user))
    return build_config_drive(files, uuid=builtins["INSTANCE_UUID"], name=builtins["INSTANCE_NAME"],
                              hostname=builtins["HOSTNAME"])


class Templater:
    def __init__(self, settings: TemplaterSettings) -> None:
        self.s = settings
        self.producer = Producer(settings.kafka_bootstrap, SOURCE)
        self.pool: asyncpg.Pool | None = None
        self.plans = ConsumeLoop(settings.kafka_bootstrap, ConsumerSpec(
            name="templater", group="templater", topics=(str(Topic.PLANS),), handler=self.on_plan,
            types=frozenset({"EvacuationPlan"}),
        ), self.producer, settings.fetch_max_wait_ms)

    async def main(self) -> None:
        self.pool = await connect_pool(self.s.database_url, max_size=3)
        await retry_start("broker", lambda: ensure_topics(self.s.kafka_bootstrap))
        await retry_start("producer", self.producer.start)
        await retry_start("plan consumer", self.plans.start)
        try:
            await gather_forever(self.plans.run(), broker_watch(self.s.kafka_bootstrap, "templater").run())
        finally:
            await self.plans.stop()
            await self.producer.stop()
            await close_pool(self.pool)

    async def template(self, ref: str) -> tuple[str, Any] | None:
        """The text and bodies of a template reference ``name`` (newest version) or
        ``name@version``; None when no such template is registered."""
        assert self.pool is not None
        name, at, version = ref.partition("@")
        if at and not version.isdigit():
            return None
        row = await self.pool.fetchrow(
            "SELECT text, bodies FROM templates WHERE name=$1 AND ($2::int IS NULL OR version=$2)"
            " ORDER BY version DESC LIMIT 1", name, int(version) if at else None)
        return (row["text"], row["bodies"]) if row else None

    async def on_plan(self, env: Envelope, msg: Message) -> None:
        assert isinstance(msg, EvacuationPlan)
        # Orders are derived deterministically (order id from item id and attempt), so a
        # redelivered plan yields the same orders and the executor treats them as one.
        failed = 0
        orders: list[tuple[str, str | None, bytes]] = []
        for a in msg.assignments:
            drive: str | None = None
            staged: tuple[str, str] | None = None
            if a.template:
                # Reading the template is infrastructure: a database error fails the whole
                # handler, which the consume loop retries. Everything after it concerns this
                # item alone and fails it alone, whatever the exception.
                found = await self.template(a.template)
                try:
                    if found is None:
                        raise TemplateError(f"server template {a.template!r} is not registered", line=0, column=0)
                    iso = config_drive_for(a, found[0], found[1])
                    if len(iso) <= self.s.inline_config_drive_bytes:
                        drive = base64.b64encode(iso).decode()
                    else:
                        staged = self.stage(order_id(a.item_id, a.attempt), iso)
                except (TemplateError, RebuildError, ValueError) as exc:
                    await self.fail(msg, a, f"template {a.template}: {exc}")
                    failed += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a corrupt templates row: this item only
                    log.warning("%s: rendering %s failed", a.instance_name, a.template, exc_info=True)
                    await self.fail(msg, a, f"template {a.template}: cannot render: {exc!r}")
                    failed += 1
                    continue
            order = RebuildOrder(
                order_id=order_id(a.item_id, a.attempt), evacuation_id=msg.evacuation_id, item_id=a.item_id,
                source=msg.source, target=a.target, instance_uuid=a.instance_uuid, instance_name=a.instance_name,
                attempt=a.attempt, xml=a.xml, power_state=a.power_state, config_drive_b64=drive,
                config_drive_path=staged[0] if staged else None, config_drive_sha256=staged[1] if staged else None,
            )
            raw = encode(wrap(order, SOURCE))
            if len(raw) > MAX_ORDER_BYTES:
                # The broker would refuse it, and the consume loop would retry that forever,
                # holding up every plan behind this one.
                why = f"the rebuild order is too large to send ({len(raw)} bytes, limit {MAX_ORDER_BYTES})"
                if drive:
                    why = (f"template {a.template}: {why}: its config drive is {len(drive)} bytes base64 and"
                           " delivery on shared storage is not implemented")
                await self.fail(msg, a, why)
                failed += 1
                continue
            orders.append((str(Topic.ORDERS), order.key(), raw))
        # All orders of the plan at once: one acknowledgement round, not one per order.
        await self.producer.send_many(orders)
        log.info("plan %s: %d orders, %d failed to render", msg.evacuation_id, len(msg.assignments) - failed, failed)

    def stage(self, oid: str, iso: bytes) -> tuple[str, str]:
        """Put a config drive too large for the bus on the shared storage; the order
        carries its path and sha256. Raises RebuildError when there is no shared storage."""
        if not self.s.shared_storage:
            raise RebuildError("render", f"the config drive is {len(iso)} bytes, over the inline limit of"
                               f" {self.s.inline_config_drive_bytes}, and EVACUATE_SHARED_STORAGE is not set")
        folder = Path(self.s.shared_storage) / ".evacuate" / "config-drives" / "staged"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{oid}.iso"
        tmp = folder / f".{oid}.iso.tmp"
        tmp.write_bytes(iso)
        os.replace(tmp, path)  # a reader never sees half a file
        return str(path), hashlib.sha256(iso).hexdigest()

    async def fail(self, plan: EvacuationPlan, a: Assignment, error: str) -> None:
        log.warning("%s: %s", a.instance_name, error)
        await self.producer.publish(RebuildResult(
            order_id=order_id(a.item_id, a.attempt), evacuation_id=plan.evacuation_id, item_id=a.item_id,
            instance_uuid=a.instance_uuid, host=a.target, attempt=a.attempt, ok=False, error=error,
            retryable=False, steps=(Step(name="render", ok=False, seconds=0.0, detail=error),),
        ))


async def amain(settings: TemplaterSettings) -> None:
    require_infra(settings)
    await Templater(settings).main()


