"""docs/recovery.png from docs/recovery.csv (case,vms,seconds: the figures of
bench/recovery.py in docs/benchmarks.md): recovery time against the number of VMs on the
failed host(s), both on log scales, with the default times of the anchors as reference.

    .venv/bin/python bench/plot_recovery.py [--csv docs/recovery.csv] [--out docs/recovery.png]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"

# (seconds, label, label above the line): what each anchor needs by default before (or to)
# recover a failed host's VMs.
ANCHORS = (
    (15.0, "vSphere HA: ≥ 15 s to declare a host failed (then restarts)", True),
    (60.0, "Nova evacuate: manual, after service_down_time 60 s", True),
    (120.0, "Proxmox ha-manager: ≈ 120 s", True),
    (300.0, "Masakari: ≈ 300 s (several minutes)", False),  # below: Kubernetes' label is just above
    (330.0, "Kubernetes + KubeVirt: ≈ 330 s (5–6 min)", True),
)
DETECTION_TIMEOUT = 3.0  # the profile the points were measured with: 1 s heartbeats × 3 misses


def read_points(path: Path) -> dict[str, list[tuple[int, float]]]:
    """(vms, seconds) by case, in file order; a bad row raises ValueError quoting it."""
    points: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["case", "vms", "seconds"]:
            raise ValueError(f"{path}: header {reader.fieldnames!r}, expected ['case', 'vms', 'seconds']")
        for row in reader:
            try:
                vms, seconds = int(row["vms"]), float(row["seconds"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: bad row {row!r}: vms must be an integer, seconds a number") from None
            if vms <= 0 or seconds <= 0:
                raise ValueError(f"{path}: bad row {row!r}: vms and seconds must be > 0 (log scales)")
            points.setdefault(row["case"], []).append((vms, seconds))
    if not points:
        raise ValueError(f"{path}: no rows")
    return points


def plot(points: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for (case, pts), marker in zip(points.items(), "os^Dv", strict=False):
        ax.plot([v for v, _ in pts], [s for _, s in pts], marker=marker, linestyle="none", markersize=7,
                label=f"Evacuate: {case}")
    vms = [v for pts in points.values() for v, _ in pts]
    left, right = min(vms) / 2, max(vms) * 2
    for seconds, label, above in ANCHORS:
        ax.axhline(seconds, color="grey", linestyle="--", linewidth=1)
        ax.text(left * 1.05, seconds * (1.04 if above else 0.96), label, fontsize=8, color="dimgrey",
                va="bottom" if above else "top")
    ax.axhline(DETECTION_TIMEOUT, color="tab:green", linestyle=":", linewidth=1)
    ax.text(right / 1.05, DETECTION_TIMEOUT * 1.04, f"our detection timeout ({DETECTION_TIMEOUT:g} s)", fontsize=8,
            color="tab:green", va="bottom", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left, right)
    ax.set_ylim(1, 1000)
    ax.set_xlabel("VMs on the failed host(s)")
    ax.set_ylabel("recovery time (s): kill to every VM running elsewhere")
    ax.set_title("Recovery time against VM count, with the anchors' default times")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description="Plot recovery time against VM count (PNG)")
    ap.add_argument("--csv", type=Path, default=DOCS / "recovery.csv")
    ap.add_argument("--out", type=Path, default=DOCS / "recovery.png")
    args = ap.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench/plot_recovery.py needs matplotlib: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2
    try:
        points = read_points(args.csv)
    except (OSError, ValueError) as exc:
        print(f"bench/plot_recovery.py: {exc}", file=sys.stderr)
        return 2
    plot(points, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
