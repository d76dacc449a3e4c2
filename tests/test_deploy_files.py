"""The example settings files name only real settings, and the systemd units start
modules that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from services.common import settings as settings_module
from services.common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {f"EVACUATE_{f.upper()}" for cls in vars(settings_module).values()
         if isinstance(cls, type) and issubclass(cls, CommonSettings) for f in cls.model_fields}


def test_example_env_files_name_only_real_settings() -> None:
    files = sorted((ROOT / "deploy").glob("*.env.example"))
    assert files
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                var = line.split("=", 1)[0]
                assert var in KNOWN, f"{f.name}: {var} is not a setting"


def test_units_start_existing_modules() -> None:
    units = sorted((ROOT / "deploy").glob("*.service"))
    assert units
    for unit in units:
        m = re.search(r"^ExecStart=\S+ -m (\S+)$", unit.read_text(), re.M)
        assert m, unit.name
        module = m.group(1)
        names = ["detector", "planner", "templater", "api"] if "%i" in module else [module.split(".")[-1]]
        for name in names:
            assert importlib.util.find_spec(f"services.{name}.__main__") is not None, f"{unit.name}: {name}"
