"""The sentences that explain a placement decision (kept for the audit trail)."""

from __future__ import annotations

from collections.abc import Sequence

from services.planner.placement_model import Flavor

# How many host names a no-capacity reason quotes per cause before it just counts.
NAMES_PER_CAUSE = 5


def placed(host: str, lead: str, free_memory_mib: int, notes: Sequence[str]) -> str:
    """E.g. ``h3: most free RAM after placement (free 3072 MiB), anti-affinity group web
    respected``."""
    text = f"{host}: {lead} (free {free_memory_mib} MiB)"
    return ", ".join([text, *notes])


Cause = tuple[str, Sequence[str] | int]


def no_capacity(head: str, causes: Sequence[Cause]) -> str:
    """E.g. ``no host can take 4 vCPU / 8192 MiB RAM / 40 GiB disk: short of RAM: h2;
    12 more with less free RAM than needed, or full; disabled: h3``. Each cause comes with
    the hosts it rules out (quoted up to a few) or just their number."""
    parts = []
    for cause, hosts in causes:
        if isinstance(hosts, int):
            parts.append(f"{hosts} {cause}")
        elif not hosts:
            parts.append(cause)
        else:
            shown = ", ".join(hosts[:NAMES_PER_CAUSE])
            more = len(hosts) - NAMES_PER_CAUSE
            parts.append(f"{cause}: {shown}" + (f" and {more} more" if more > 0 else ""))
    return f"{head}: " + ("; ".join(parts) if parts else "there is no other host")


def target_refused(target: str, problem: str) -> str:
    return f"target host {target!r} {problem}; choose an up, enabled host that did not fail"


def target_too_small(target: str, count: int, demand: Flavor, free: Flavor) -> str:
    short = [
        label
        for label, want, have in (
            ("vCPU", demand.vcpus, free.vcpus),
            ("RAM", demand.memory_mib, free.memory_mib),
            ("disk", demand.disk_gib, free.disk_gib),
        )
        if want > have
    ]
    return (
        f"target host {target!r} cannot take the {count} instance(s) to evacuate: they need "
        f"{demand.describe()}, it has {free.describe()} free (short of {', '.join(short)}); "
        "choose a larger host or evacuate without a target"
    )
