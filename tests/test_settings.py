"""Settings: the generated reference is current, and a bad value stops a service at
start with exit code 2 and a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.evacctl.settings_doc import render

ROOT = Path(__file__).resolve().parents[1]


def test_settings_reference_is_current() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == render(), (
        "docs/settings.md is stale: python -m services.evacctl.settings_doc > docs/settings.md")


@pytest.mark.parametrize("module, var, value, words", [
    ("services.executor", "EVACUATE_HEARTBEAT_INTERVAL", "-1", "greater than 0"),
    ("services.detector", "EVACUATE_PROFILE", "turbo", "'production' or 'aggressive'"),
    ("services.planner", "EVACUATE_MAX_ATTEMPTS", "lots", "valid integer"),
    ("services.templater", "EVACUATE_FETCH_MAX_WAIT_MS", "0", "greater than or equal to 1"),
])
def test_invalid_setting_exits_2_naming_the_variable(module: str, var: str, value: str, words: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVACUATE_")}
    env[var] = value
    out = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert var in out.stderr and repr(value) in out.stderr and words in out.stderr, out.stderr


def test_missing_broker_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVACUATE_")}
    out = subprocess.run([sys.executable, "-m", "services.planner"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "EVACUATE_KAFKA_BOOTSTRAP is not set" in out.stderr
