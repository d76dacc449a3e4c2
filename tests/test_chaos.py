"""The short chaos campaign of CI: one run of each fault scenario on the real stack,
judged by the invariant checker (bench/chaos.py runs the long randomized campaign)."""

from __future__ import annotations

import pytest

from services.evacctl.chaos import SCENARIOS, run_one

pytestmark = pytest.mark.slow

# host-kill is part of every other scenario; the broker and PostgreSQL restarts have tests of
# their own (tests/test_broker_restart.py, tests/test_postgres_restart.py). The network cut
# runs with each isolation response: power-off (evacuated) and none (isolated, not evacuated).
CASES = [pytest.param(s, None, id=s) for s in SCENARIOS
         if s not in ("host-kill", "broker-restart", "postgres-restart", "network-cut")] + [
    pytest.param("network-cut", r, id=f"network-cut-{r}") for r in ("power-off", "none")]


@pytest.mark.parametrize(("scenario", "response"), CASES)
async def test_scenario_keeps_every_invariant(scenario: str, response: str | None) -> None:
    seed = 4242 + SCENARIOS.index(scenario)
    r = await run_one(seed, scenario, isolation_response=response)
    if r.faults and r.faults[0].startswith("skipped: "):
        pytest.skip(r.faults[0])
    assert not r.violations, f"seed {seed}: " + "; ".join(r.violations)
    assert r.double_runs == 0 and r.lost == 0
    if response == "none":  # isolated, never evacuated
        assert r.evacuated == r.vms == 0, f"seed {seed}: evacuated {r.evacuated}"
        assert "isolated, not evacuated" in "; ".join(r.faults)
    else:
        assert r.evacuated == r.vms > 0, f"seed {seed}: evacuated {r.evacuated} of {r.vms}"
