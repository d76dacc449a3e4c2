"""The redfish fence against a real Redfish service: the sushy-tools emulator (PyPI,
OpenStack's BMC emulator) run as its own HTTP server process on a free loopback port,
with its fake driver (``--fake``: systems held in its own state directory, a ForceOff
that takes effect 1-11 s later, as a real BMC's would) and, where a test needs it, HTTP
basic auth from a bcrypt htpasswd file (the only scheme sushy-tools accepts).

One case — a BMC that accepts ForceOff but never reports Off — cannot be made with the
emulator; it uses an httpx MockTransport stub and says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest

from services.common.settings import DetectorSettings
from services.detector.fencing import registry
from services.detector.fencing.redfish import RedfishFencer

EMULATOR = Path(sys.executable).parent / "sushy-emulator"
USER, PASSWORD = "fencer", "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bmc:
    base: str
    systems: dict[str, str]  # name -> uuid
    log: Path

    def system_url(self, name: str) -> str:
        return f"{self.base}/redfish/v1/Systems/{self.systems[name]}"

    def power_state(self, name: str) -> str:
        """Read independently of the fence, with the right credentials."""
        r = httpx.get(self.system_url(name), auth=(USER, PASSWORD), timeout=5)
        r.raise_for_status()
        return str(r.json()["PowerState"])


@pytest.fixture
def start_bmc(tmp_path: Path) -> Iterator[Callable[..., Bmc]]:
    """Start sushy-emulator processes: ``start_bmc(node-1="On", ..., auth=True)``."""
    if not EMULATOR.exists():
        pytest.fail(f"{EMULATOR} missing: sushy-tools is in the test extra (pip install -e '.[test]')")
    procs: list[subprocess.Popen[bytes]] = []

    def start(auth: bool = False, disable_power_off: bool = False, **power: str) -> Bmc:
        d = tmp_path / f"bmc-{len(procs)}"
        d.mkdir()
        systems = {name: str(uuid.uuid4()) for name in power}
        config = {
            "SUSHY_EMULATOR_STATE_DIR": str(d / "state"),  # not the shared /tmp/sushy-emulator
            "SUSHY_EMULATOR_FAKE_SYSTEMS": [
                {"uuid": systems[n], "name": n, "power_state": p, "nics": [{"mac": f"00:5c:52:31:3a:{i:02x}"}]}
                for i, (n, p) in enumerate(power.items())
            ],
            "SUSHY_EMULATOR_DISABLE_POWER_OFF": disable_power_off,
        }
        if auth:
            htpasswd = d / "htpasswd"
            htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
            config["SUSHY_EMULATOR_AUTH_FILE"] = str(htpasswd)
        cfg = d / "emulator.conf"
        cfg.write_text("".join(f"{k} = {v!r}\n" for k, v in config.items()))  # a Python file
        port = free_port()
        log = d / "emulator.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(EMULATOR), "--fake", "--config", str(cfg), "-i", "127.0.0.1", "-p", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/redfish/v1", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sushy-emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return Bmc(base, systems, log)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def fencer(**kw: object) -> RedfishFencer:
    args: dict[str, object] = {"username": USER, "password": lambda: PASSWORD, "confirm_timeout": 20.0,
                               "poll_interval": 0.25, "request_timeout": 5.0}
    args.update(kw)
    return RedfishFencer(**args)  # type: ignore[arg-type]


async def test_force_off_powers_the_system_off(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(auth=True, **{"node-1": "On", "node-2": "On"})
    assert bmc.power_state("node-1") == "On"
    out = await fencer().fence("h1", bmc.system_url("node-1"))
    assert out.ok, out.reason
    assert "powered off via Redfish ForceOff" in out.reason and bmc.systems["node-1"] in out.reason
    assert bmc.power_state("node-1") == "Off"
    assert bmc.power_state("node-2") == "On"  # only the named system
    posts = [ln for ln in bmc.log.read_text().splitlines() if "POST" in ln]
    assert len(posts) == 1 and f"/Systems/{bmc.systems['node-1']}/Actions/ComputerSystem.Reset" in posts[0]

    again = await fencer().fence("h1", bmc.system_url("node-1"))
    assert again.ok and "already reports PowerState Off" in again.reason


async def test_base_url_discovers_the_single_system(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(**{"node-1": "On"})
    out = await fencer(username="").fence("h1", bmc.base + "/")
    assert out.ok, out.reason
    assert bmc.power_state("node-1") == "Off"


async def test_system_named_by_name_is_followed_to_its_uuid(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(auth=True, **{"node-1": "Off"})  # the emulator redirects a name to the uuid
    out = await fencer().fence("h1", f"{bmc.base}/redfish/v1/Systems/node-1")
    assert out.ok and "already" in out.reason, out.reason


async def test_base_url_with_several_systems_is_refused(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(**{"node-1": "On", "node-2": "On"})
    out = await fencer().fence("h1", bmc.base)
    assert not out.ok
    assert "lists 2 systems" in out.reason and "/redfish/v1/Systems/<id>" in out.reason
    assert bmc.power_state("node-1") == bmc.power_state("node-2") == "On"


async def test_wrong_credentials_fail_with_401(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(auth=True, **{"node-1": "On"})
    for f in (fencer(password=lambda: "wrong"), fencer(username="")):
        out = await f.fence("h1", bmc.system_url("node-1"))
        assert not out.ok
        assert "HTTP 401" in out.reason and "EVACUATE_FENCE_USERNAME" in out.reason, out.reason
        assert "wrong" not in out.reason
    assert bmc.power_state("node-1") == "On"


async def test_unreachable_bmc_fails_with_the_connection_error() -> None:
    port = free_port()  # bound then closed: nothing listens there
    t0 = time.monotonic()
    out = await fencer().fence("h1", f"http://127.0.0.1:{port}/redfish/v1/Systems/1")
    assert not out.ok
    assert f"cannot reach the BMC at http://127.0.0.1:{port}" in out.reason and "connection failed" in out.reason
    assert "Connection refused" in out.reason or "connect" in out.reason.lower()
    assert time.monotonic() - t0 < 5


async def test_unknown_system_fails_with_404(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(**{"node-1": "On"})
    out = await fencer().fence("h1", f"{bmc.base}/redfish/v1/Systems/{uuid.uuid4()}")
    assert not out.ok and "HTTP 404" in out.reason, out.reason


async def test_refused_force_off_fails_with_the_bmc_message(start_bmc: Callable[..., Bmc]) -> None:
    bmc = start_bmc(disable_power_off=True, **{"node-1": "On"})
    out = await fencer().fence("h1", bmc.system_url("node-1"))
    assert not out.ok
    assert "HTTP 400" in out.reason and "(ForceOff)" in out.reason and "DISABLE_POWER_OFF" in out.reason, out.reason
    assert bmc.power_state("node-1") == "On"


@pytest.mark.parametrize("target", [
    "", "   ", "bmc.example", "not a url at all", "ftp://bmc.example/", "http://",
    "https://bmc.example/redfish/v1/Managers/1", "https://bmc.example/redfish/v1/Systems/1/Bios",
    "https://bmc.example/redfish/v1/Systems/1?x=1", "https://admin:hunter2@bmc.example/",
])
async def test_bad_target_fails_without_a_request(target: str) -> None:
    def no_request(req: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a bad target must not reach the network: {req.url}")

    out = await fencer(transport=httpx.MockTransport(no_request)).fence("h1", target)
    assert not out.ok
    assert out.reason.startswith("redfish fence of h1 failed: ")
    assert "hunter2" not in out.reason


async def test_system_that_never_reports_off_fails_in_time() -> None:
    """A stub BMC (httpx MockTransport, not the emulator): accepts ForceOff, stays On."""
    calls: list[str] = []

    def bmc(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        if req.method == "POST":
            return httpx.Response(204)
        return httpx.Response(200, json={"Id": "1", "PowerState": "On", "Actions": {
            "#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/Reset.Custom"}}})

    t0 = time.monotonic()
    out = await fencer(transport=httpx.MockTransport(bmc), confirm_timeout=1.0, poll_interval=0.1).fence(
        "h1", "https://bmc.example/redfish/v1/Systems/1")
    assert not out.ok
    assert "did not report PowerState Off within 1 s" in out.reason and "'On'" in out.reason, out.reason
    assert 0.8 < time.monotonic() - t0 < 2.0
    assert calls[1] == "POST /redfish/v1/Systems/1/Actions/Reset.Custom"  # the advertised action target
    assert calls.count("GET /redfish/v1/Systems/1") > 3


async def test_registry_builds_the_drivers_from_settings(tmp_path: Path, start_bmc: Callable[..., Bmc]) -> None:
    secret = tmp_path / "bmc-password"
    secret.write_text(PASSWORD + "\n")
    s = DetectorSettings(fence_username=USER, fence_password="ignored", fence_password_file=str(secret),
                         fence_poll_interval=0.25, profile="production")
    drivers = registry(s)
    assert {"process", "redfish", "ipmi"} <= set(drivers)
    redfish = drivers["redfish"]
    assert isinstance(redfish, RedfishFencer) and redfish.confirm_timeout == 25.0
    aggressive = registry(DetectorSettings(profile="aggressive"))["redfish"]
    assert isinstance(aggressive, RedfishFencer) and aggressive.confirm_timeout == 9.0  # below the 10 s fence timeout

    bmc = start_bmc(auth=True, **{"node-1": "Off"})  # the password from the file gets past the auth
    out = await redfish.fence("h1", bmc.system_url("node-1"))
    assert out.ok and "already" in out.reason, out.reason
    secret.unlink()
    out = await redfish.fence("h1", bmc.system_url("node-1"))
    assert not out.ok and "bmc-password" in out.reason
