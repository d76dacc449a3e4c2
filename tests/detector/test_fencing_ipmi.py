"""The ipmi fence with a fake ``ipmitool``.

There is no IPMI BMC (or emulator) here, so these tests do NOT show that a real BMC
powers off. What they do test, honestly: the command lines the fence runs (interface,
host, port, user, the password passed through ``IPMI_PASSWORD`` / ``-E`` and never on the
command line), how it reads ipmitool's output, and how it reports failures. The fake is a
real executable put first on PATH; it records each call and prints the lines the real
ipmitool prints (``Chassis Power Control: Down/Off``, ``Chassis Power is on|off``,
``Error: Unable to establish IPMI v2 / RMCP+ session`` on stderr with exit 1).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from services.detector.fencing.ipmi import IpmiFencer, parse_target

FAKE = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
mode = open(os.path.join(here, "mode")).read().strip()
args = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({{"args": args, "password": os.environ.get("IPMI_PASSWORD")}}) + "\\n")
if mode == "auth-fail":
    print("Error: Unable to establish IPMI v2 / RMCP+ session", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    time.sleep(60)
state = os.path.join(here, "polls")
if args[-3:] == ["chassis", "power", "off"]:
    print("Chassis Power Control: Down/Off")
elif args[-3:] == ["chassis", "power", "status"]:
    n = int(open(state).read()) if os.path.exists(state) else 0
    open(state, "w").write(str(n + 1))
    off = mode == "off-after-2" and n >= 2
    print("Chassis Power is " + ("off" if off else "on"))
else:
    print("ipmitool: unexpected command " + " ".join(args), file=sys.stderr)
    sys.exit(1)
"""


class FakeIpmitool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        exe = directory / "ipmitool"
        exe.write_text(FAKE.format(python=sys.executable))
        exe.chmod(0o755)
        self.mode("off-after-2")

    def mode(self, mode: str) -> None:
        (self.dir / "mode").write_text(mode)

    def calls(self) -> list[dict[str, object]]:
        log = self.dir / "calls.jsonl"
        return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def ipmitool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIpmitool:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("IPMI_PASSWORD", "detector-own-env")  # must not leak into a fence without a password
    return FakeIpmitool(bin_dir)


def fencer(**kw: object) -> IpmiFencer:
    args: dict[str, object] = {"username": "admin", "password": lambda: "pw-123", "confirm_timeout": 5.0,
                               "poll_interval": 0.05, "request_timeout": 2.0}
    args.update(kw)
    return IpmiFencer(**args)  # type: ignore[arg-type]


async def test_power_off_then_status_until_off(ipmitool: FakeIpmitool) -> None:
    out = await fencer().fence("h1", "bmc.example")
    assert out.ok, out.reason
    assert "powered off via IPMI chassis power off" in out.reason and "'Chassis Power is off'" in out.reason
    calls = ipmitool.calls()
    base = ["-I", "lanplus", "-H", "bmc.example", "-U", "admin", "-E"]
    assert calls[0]["args"] == base + ["chassis", "power", "off"]
    assert [c["args"] for c in calls[1:]] == [base + ["chassis", "power", "status"]] * 3  # on, on, off
    assert all(c["password"] == "pw-123" for c in calls)
    assert not any("pw-123" in a for c in calls for a in c["args"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("target", "expected"), [
    ("bmc.example:6230", ["-H", "bmc.example", "-p", "6230"]),
    ("ipmi://10.0.0.9:623/", ["-H", "10.0.0.9", "-p", "623"]),
    ("[fd00::9]:623", ["-H", "fd00::9", "-p", "623"]),
    ("fd00::9", ["-H", "fd00::9"]),
])
async def test_target_forms(ipmitool: FakeIpmitool, target: str, expected: list[str]) -> None:
    out = await fencer(username="", password=lambda: "").fence("h1", target)
    assert out.ok, out.reason
    first = ipmitool.calls()[0]
    assert first["args"] == ["-I", "lanplus", *expected, "chassis", "power", "off"]  # no -U, no -E
    assert first["password"] is None


async def test_ipmitool_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    out = await fencer().fence("h1", "bmc.example")
    assert not out.ok and out.reason == "ipmi fence of h1 failed: ipmitool is not installed"


async def test_non_zero_exit_reports_stderr(ipmitool: FakeIpmitool) -> None:
    ipmitool.mode("auth-fail")
    out = await fencer().fence("h1", "bmc.example")
    assert not out.ok
    assert "chassis power off on bmc.example failed (exit 1)" in out.reason
    assert "Unable to establish IPMI v2 / RMCP+ session" in out.reason
    assert len(ipmitool.calls()) == 1  # no status polling after a refused power off


async def test_host_that_never_reads_off_fails_in_time(ipmitool: FakeIpmitool) -> None:
    ipmitool.mode("stays-on")
    t0 = time.monotonic()
    out = await fencer(confirm_timeout=1.0).fence("h1", "bmc.example")
    assert not out.ok
    assert "did not report 'Chassis Power is off' within 1 s" in out.reason
    assert "last: 'Chassis Power is on'" in out.reason
    assert 0.8 < time.monotonic() - t0 < 10.0  # bounded (generous: a loaded CI machine is slow)


async def test_hung_ipmitool_is_killed_at_the_request_timeout(ipmitool: FakeIpmitool) -> None:
    ipmitool.mode("hang")
    t0 = time.monotonic()
    out = await fencer(request_timeout=0.5).fence("h1", "bmc.example")
    assert not out.ok and "chassis power off on bmc.example timed out after 0.5 s" in out.reason, out.reason
    assert time.monotonic() - t0 < 10.0  # killed, not waited for (generous bound for a loaded machine)


@pytest.mark.parametrize("target", ["", "-oProxyCommand=x", "bmc example", "bmc:0", "bmc:99999", "bmc:x",
                                    "[fd00::9", "[bmc]:623", "a;b"])
async def test_bad_target_runs_nothing(ipmitool: FakeIpmitool, target: str) -> None:
    out = await fencer().fence("h1", target)
    assert not out.ok and out.reason.startswith("ipmi fence of h1 failed: "), out.reason
    assert ipmitool.calls() == []


def test_parse_target() -> None:
    assert parse_target(" bmc-1.example ") == ("bmc-1.example", None)
    assert parse_target("bmc:623") == ("bmc", 623)
    with pytest.raises(ValueError, match="no BMC address"):
        parse_target("")
