"""The chaos campaign: N randomized fault scenarios on the real stack, each judged by
the invariant checker. Prints one row per run and a summary; exits 1 on any violation
(re-run a single failing run with --seed S --runs 1).

    .venv/bin/python bench/chaos.py --runs 20 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from services.evacctl.chaos import SCENARIOS, run_one


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", choices=SCENARIOS, default=None)
    args = ap.parse_args()
    os.environ.setdefault("EVACUATE_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=logging.ERROR)  # this process's own clients: broker and database restarts are expected
    print(f"{'seed':>8} {'scenario':<14} {'VMs':>4} {'evacuated':>9} {'double':>6} {'lost':>4} {'recover s':>9}"
          "  faults")
    bad = 0
    times = []
    for i in range(args.runs):
        seed = args.seed * 100_000 + i
        r = asyncio.run(run_one(seed, args.scenario))
        rec = f"{r.recover_s:.2f}" if r.recover_s is not None else "-"
        print(f"{seed:>8} {r.scenario:<14} {r.vms:>4} {r.evacuated:>9} {r.double_runs:>6} {r.lost:>4} {rec:>9}"
              f"  {'; '.join(r.faults)}", flush=True)
        for v in r.violations:
            print(f"         VIOLATION: {v}", flush=True)
        for u in r.unplaced:
            print(f"         not evacuated (recorded): {u}", flush=True)
        bad += bool(r.violations)
        if r.recover_s is not None:
            times.append(r.recover_s)
    times.sort()
    p50 = times[len(times) // 2] if times else float("nan")
    print(f"\n{args.runs} runs, {bad} with violations; time to recover p50 {p50:.2f}s,"
          f" max {max(times) if times else float('nan'):.2f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
