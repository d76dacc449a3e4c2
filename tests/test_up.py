"""`evacctl up` as a real subprocess on embedded defaults: the API answers, simulated
hosts register and one is evacuated, SIGTERM stops every child, and a second `up`
finds the same PostgreSQL data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.common.embedded import free_port

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def start_up(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "services.evacctl.cli", "up"], env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    info: dict[str, str] = {}
    while time.monotonic() < deadline and "running" not in info:
        assert proc.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            m = re.match(r"(\w+)[\s;]+(.*)", line)
            if m:
                info[m.group(1)] = m.group(2)
        time.sleep(0.2)
    assert "running" in info, log.read_text()
    return proc, info


def wait(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_runs_supervises_stops_and_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVACUATE_")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), EVACUATE_API_PORT=str(port), EVACUATE_PROFILE="aggressive",
               EVACUATE_HEARTBEAT_INTERVAL="0.5")
    proc, info = start_up(env, tmp_path / "up1.log")
    hosts_procs: list[subprocess.Popen[bytes]] = []
    try:
        broker = info["broker"].split()[0]
        token = (tmp_path / "data" / "evacuate" / "api-tokens").read_text().strip().split(",")[0].split(":", 1)[1]
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        wait(lambda: _ok(api, "/healthz"), "the API")
        shared = tmp_path / "shared"
        for i in (1, 2):
            henv = dict(env, EVACUATE_KAFKA_BOOTSTRAP=broker, EVACUATE_SHARED_STORAGE=str(shared),
                        EVACUATE_HOST=f"up{i}", EVACUATE_SIMHOST_DIR=str(tmp_path / f"sim{i}"))
            hosts_procs.append(subprocess.Popen([sys.executable, "-m", "services.evacctl.simhost", "--index",
                                                 str(40 + i), "--vms", "3"], env=henv, start_new_session=True,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(lambda: sorted(h["name"] for h in _json(api, "/v1/hosts") if h["state"] == "up") == ["up1", "up2"],
             "both hosts up")
        wait(lambda: len(_json(api, "/v1/instances")) == 6, "the inventory")
        os.killpg(hosts_procs[0].pid, signal.SIGKILL)
        wait(lambda: any(e["source"] == "up1" and e["status"] != "running" for e in _json(api, "/v1/evacuations")),
             "the evacuation of up1")
        evac = next(e for e in _json(api, "/v1/evacuations") if e["source"] == "up1")
        assert evac["status"] == "completed", evac

        # a supervised service that dies is restarted
        kids = children(proc.pid)
        planner = next(p for p in kids if b"services.planner" in Path(f"/proc/{p}/cmdline").read_bytes())
        os.kill(planner, signal.SIGKILL)
        wait(lambda: any(b"services.planner" in _cmdline(p) for p in children(proc.pid) if p != planner),
             "the planner restarted")
        kids = children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        for h in hosts_procs:
            if h.poll() is None:
                os.killpg(h.pid, signal.SIGKILL)
                h.wait()
    assert proc.returncode == 0
    assert not [p for p in kids if alive(p)], "a child of `up` outlived it"

    proc2, _ = start_up(env, tmp_path / "up2.log")
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        wait(lambda: _ok(api, "/healthz"), "the API again")
        names = sorted(h["name"] for h in _json(api, "/v1/hosts"))
        assert names == ["up1", "up2"], "a second `up` must find the same PostgreSQL data"
        assert any(e["source"] == "up1" for e in _json(api, "/v1/evacuations"))
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(30)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ok(api: httpx.Client, path: str) -> bool:
    try:
        return api.get(path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _json(api: httpx.Client, path: str) -> list[dict[str, object]]:
    r = api.get(path, timeout=5)
    r.raise_for_status()
    body = r.json()
    return body["items"] if isinstance(body, dict) and "items" in body else body
