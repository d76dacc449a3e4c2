"""bench/soak.py, shortened: 2,000 simulated hosts heartbeat every 0.5 s for a minute to
one detector (real broker, real PostgreSQL) with a 2 s detection timeout (4 misses). No
host stops, so any HostSuspect/NodeDown/HostIsolated is a false positive: the bench exits
1 and this test fails."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
ARGS = ["--minutes", "1", "--hosts", "2000", "--interval", "0.5", "--misses", "4"]


def test_one_minute_soak_has_no_false_positive() -> None:
    proc = subprocess.Popen([sys.executable, str(SOAK), *ARGS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its broker, detector and producer
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"bench/soak.py did not finish in 8 minutes:\n{out[-3000:]}")
    assert proc.returncode == 0, f"bench/soak.py exited {proc.returncode}:\n{out[-3000:]}"
    assert re.search(r"^detection timeout: 0\.5 s × 4 misses = 2 s", out, re.M), out[-3000:]
    assert re.search(r"^false positives \(HostSuspect/NodeDown/HostIsolated\): 0$", out, re.M), out[-3000:]
    handled = re.search(r"^heartbeats handled: ([\d,]+) ", out, re.M)
    assert handled and int(handled.group(1).replace(",", "")) > 2000 * 2 * 50, out[-3000:]  # ≥ 50 s of heartbeats
