"""Which hosts the planner has heard lately, to keep rebuilds off hosts that are failing
too but not declared down yet.

When a rack fails, its hosts are declared down one by one over about a heartbeat
interval (each one's silence crosses the timeout at its own phase). A plan made at the
first NodeDown would otherwise send VMs to the next victims, which never answer: every
such rebuild is placed again once they are down, seconds later (177 of 1,000 rebuilds
in one 10-hosts-at-once run). The planner already reads every record of
evacuate.heartbeats for the inventory; it notes when it last read one from each host
(by the record key, nothing decoded). A host silent for LATE_AFTER intervals is
avoided as a target while the other hosts can take the VMs (`choose`); only if they
cannot, it is used after all — better a live-looking host than no host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from aiokafka import ConsumerRecord

from services.common.bus import ConsumeLoop
from services.planner.placement import AssignmentStatus, HostInfo, Plan

log = logging.getLogger("services.planner")

LATE_AFTER = 1.5  # heartbeat intervals behind the newest heartbeat read: late


@dataclass
class HeardHosts:
    seen: dict[str, float] = field(default_factory=dict)

    def note(self, host: str, at: float) -> None:
        self.seen[host] = at

    def late(self, interval: float) -> frozenset[str]:
        """Hosts last heard LATE_AFTER intervals before the newest heartbeat read: judged
        against what this planner has read, not the clock, so a planner whose reading is
        behind (busy with inventory reports) or a bus that is away makes nobody late."""
        if not self.seen:
            return frozenset()
        newest = max(self.seen.values())
        limit = LATE_AFTER * interval
        return frozenset(h for h, at in self.seen.items() if newest - at > limit)


def choose(late: frozenset[str], hosts: Sequence[HostInfo], place: Callable[[Sequence[HostInfo]], Plan]) -> Plan:
    """Plan without the late hosts if that places every instance the full set would;
    else with them."""
    usable_late = {h.name for h in hosts if h.up and h.name in late}
    if not usable_late:
        return place(hosts)
    first = place([replace(h, up=False) if h.name in usable_late else h for h in hosts])
    if first.refused is None and all(a.status is not AssignmentStatus.NO_CAPACITY for a in first.assignments):
        log.info("not placing on %s: no heartbeat read for %.1f intervals (failing too?)",
                 ", ".join(sorted(usable_late)), LATE_AFTER)
        return first
    return place(hosts)


class HeardLoop(ConsumeLoop):
    """The inventory's consume loop: notes the host (record key) of every record first."""

    def __init__(self, heard: HeardHosts, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.heard = heard

    async def _handle(self, record: ConsumerRecord) -> None:
        if record.key:
            self.heard.note(record.key.decode(errors="replace"), time.time())
        await super()._handle(record)
