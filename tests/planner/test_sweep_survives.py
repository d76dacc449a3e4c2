"""Regression (chaos campaign, session 3, seed 4700053, postgres-restart): a PostgreSQL
restart cut the planner's connection mid-sweep, asyncpg raised InternalClientError, the
timeout sweep let it through and the planner exited — the failed host's VMs were never
evacuated. Every loop that catches DB_TRANSIENT must ride it out."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from services.common.db import DB_TRANSIENT
from services.planner import resume


@pytest.mark.parametrize("exc", [asyncpg.exceptions.InternalClientError("cut mid-operation"),
                                 asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
                                 ConnectionResetError("reset")])
def test_cut_connection_errors_are_transient(exc: Exception) -> None:
    assert isinstance(exc, DB_TRANSIENT)


async def test_the_timeout_sweep_goes_on_after_a_cut_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[int] = []
    again = asyncio.Event()

    async def sweep_once(self: Any) -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise asyncpg.exceptions.InternalClientError("cut mid-operation")
        again.set()

    monkeypatch.setattr(resume, "_sweep_once", sweep_once)
    planner = SimpleNamespace(pool=object(), s=SimpleNamespace(result_timeout=0.02))
    task = asyncio.ensure_future(resume.sweep_timeouts(planner))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(again.wait(), 5)
        assert not task.done(), "the sweep loop must not end on a transient database error"
    finally:
        task.cancel()
