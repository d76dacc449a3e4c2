"""A simulated compute host in one command (used by the compose `demo` profile): write
a test-driver node XML with VMs whose disks are on the shared storage, then become the
executor for it.

    python -m services.evacctl.simhost --index 1 --vms 10
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.evacctl.simcluster import plan_vms, write_node


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="simhost")
    ap.add_argument("--index", type=int, required=True, help="host number (1-99): makes MACs and UUIDs unique")
    ap.add_argument("--name", default=os.environ.get("EVACUATE_HOST", ""), help="host name (default EVACUATE_HOST)")
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--state-dir", default=os.environ.get("EVACUATE_SIMHOST_DIR", "/tmp/evacuate-simhost"))
    args = ap.parse_args(argv)
    name = args.name or f"sim-{args.index}"
    shared = Path(os.environ.get("EVACUATE_SHARED_STORAGE", "/var/lib/evacuate/shared"))
    state = Path(args.state_dir)
    uri = write_node(state / f"{name}.xml", plan_vms(args.index, name, args.vms), shared, state / "local")
    os.environ.update(EVACUATE_HOST=name, EVACUATE_LIBVIRT_URI=uri)
    os.execv(sys.executable, [sys.executable, "-m", "services.executor"])


if __name__ == "__main__":
    main()
