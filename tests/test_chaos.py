"""The short chaos campaign of CI: one run of each fault scenario on the real stack,
judged by the invariant checker (bench/chaos.py runs the long randomized campaign)."""

from __future__ import annotations

import pytest

from services.evacctl.chaos import SCENARIOS, run_one

pytestmark = pytest.mark.slow


# host-kill is part of every other scenario; the broker and PostgreSQL restarts have tests of
# their own (tests/test_broker_restart.py, tests/test_postgres_restart.py).
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("host-kill", "broker-restart",
                                                                      "postgres-restart")])
async def test_scenario_keeps_every_invariant(scenario: str) -> None:
    seed = 4242 + SCENARIOS.index(scenario)
    r = await run_one(seed, scenario)
    assert not r.violations, f"seed {seed}: " + "; ".join(r.violations)
    assert r.double_runs == 0 and r.lost == 0
    assert r.evacuated == r.vms > 0, f"seed {seed}: evacuated {r.evacuated} of {r.vms}"
