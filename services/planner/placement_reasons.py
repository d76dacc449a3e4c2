"""The sentences that explain a placement decision (kept for the audit trail)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.planner.placement_model import Flavor

# How many host names a no-capacity reason quotes per cause before it just counts.
NAMES_PER_CAUSE = 5


def placed(host: str, lead: str, free_memory_mib: int, notes: Sequence[str]) -> str:
    """E.g. ``h3: most free RAM after placement (free 3072 MiB), anti-affinity group web
    respected``."""
    text = f"{host}: {lead} (free {free_memory_mib} MiB)"
    return ", ".join([text, *notes])


def no_capacity(need: Flavor, causes: Mapping[str, Sequence[str]], prefix: str = "") -> str:
    """E.g. ``no host can take 4 vCPU / 8192 MiB RAM / 40 GiB disk: short of RAM: h2;
    disabled: h3``; ``causes`` maps a cause to the hosts it rules out, in order."""
    head = prefix or f"no host can take {need.describe()}"
    if not causes:
        return f"{head}: there is no other host"
    parts = []
    for cause, names in causes.items():
        shown = ", ".join(names[:NAMES_PER_CAUSE])
        more = len(names) - NAMES_PER_CAUSE
        parts.append(f"{cause}: {shown}" + (f" and {more} more" if more > 0 else ""))
    return f"{head}: " + "; ".join(parts)


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
