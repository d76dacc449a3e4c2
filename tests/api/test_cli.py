"""`evacctl` against a real `python -m services.api` process: real subprocess runs
(exit codes, --wait) and CliRunner runs for the formatting of every command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from services.common.settings import ApiSettings
from services.evacctl import cli

from .conftest import ADMIN, EVAC_DONE, READER, VM_DOWN_1
from .test_commands import BODIES, TEMPLATE

ROOT = Path(__file__).parents[2]


def evacctl(url: str, token: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"EVACUATE_API_URL": url, "EVACUATE_API_TOKEN": token, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "services.evacctl.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run(api_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setattr(cli.console, "width", 250)
    monkeypatch.setattr(cli.errors, "width", 250)
    yield CliRunner(env={"EVACUATE_API_URL": api_server, "EVACUATE_API_TOKEN": ADMIN})


def test_real_api_process_serves_health_and_evacctl_reads_it(api_server: str) -> None:
    health = httpx.get(f"{api_server}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["database"] == "ok"
    done = evacctl(api_server, READER, "hosts", "--output", "json")
    assert done.returncode == 0, done.stderr
    names = {h["name"] for h in json.loads(done.stdout)["items"]}
    assert {"up1", "down1"} <= names


def test_exit_codes_unreachable_refused_and_unauthorized(api_server: str) -> None:
    gone = evacctl("http://127.0.0.1:9", ADMIN, "hosts")
    assert gone.returncode == 3 and "cannot reach the API at http://127.0.0.1:9" in gone.stderr
    refused = evacctl(api_server, ADMIN, "evacuate", "up1")
    assert refused.returncode == 1 and "host is up: " in refused.stderr
    forbidden = evacctl(api_server, READER, "host", "disable", "up1")
    assert forbidden.returncode == 1 and "needs the admin role" in forbidden.stderr and "HTTP 403" in forbidden.stderr
    anonymous = evacctl(api_server, "", "hosts")
    assert anonymous.returncode == 1 and "EVACUATE_API_TOKEN" in anonymous.stderr


async def close_evacuation_of(url: str, host: str, status: str, timeout: float = 30) -> None:
    """Play the planner: wait for the API's request, then record its evacuation as closed."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        message_id = None
        while message_id is None and time.monotonic() < deadline:
            message_id = await conn.fetchval(
                "SELECT data->>'message_id' FROM audit WHERE kind = 'evacuation-requested' AND host = $1", host)
            time.sleep(0.1)
        assert message_id is not None
        evac = uuid.uuid4()
        await conn.execute("INSERT INTO evacuations (id, source, trigger, trigger_id, status, reason, completed_at)"
                           " VALUES ($1, $2, 'manual', $3, $4, 'requested by api:admin', now())",
                           evac, host, uuid.UUID(message_id), status)
        await conn.execute("INSERT INTO evacuation_items (id, evacuation_id, instance_uuid, instance_name, source,"
                           " target, attempt, status, reason) VALUES ($1, $2, $3, 'vm-w', $4, 'up1', 1, $5, 'why')",
                           uuid.uuid4(), evac, uuid.uuid4(), host, "done" if status == "completed" else "failed")
    finally:
        await conn.close()


@pytest.mark.parametrize("host,status,code", [("down3", "completed", 0), ("down4", "failed", 1)])
async def test_evacuate_wait_exits_by_outcome(api_server: str, api_settings: ApiSettings, host: str, status: str,
                                              code: int) -> None:
    env = {"EVACUATE_API_URL": api_server, "EVACUATE_API_TOKEN": ADMIN, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "services.evacctl.cli", "evacuate", host, "--wait",
                             "--timeout", "60"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        await close_evacuation_of(api_settings.database_url, host, status)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (out, err)
    assert f"evacuation of {host} requested" in out and "vm-w" in out


def test_read_commands_as_tables_and_json(run: CliRunner) -> None:
    hosts = run.invoke(cli.app, ["hosts"])
    assert hosts.exit_code == 0 and "down1" in hosts.stdout and "fenced by process" in hosts.stdout
    inst = run.invoke(cli.app, ["instances", "--host", "down1"])
    assert inst.exit_code == 0 and "vm-a" in inst.stdout and "vm-c" not in inst.stdout
    inst_json = json.loads(run.invoke(cli.app, ["instances", "--host", "down1", "-o", "json"]).stdout)
    assert VM_DOWN_1 in [i["uuid"] for i in inst_json["items"]]
    evacs = run.invoke(cli.app, ["evacuations", "--source", "old1"])
    assert evacs.exit_code == 0 and EVAC_DONE in evacs.stdout and "completed" in evacs.stdout
    evacs_json = json.loads(run.invoke(cli.app, ["evacuations", "--output", "json"]).stdout)
    assert EVAC_DONE in [e["id"] for e in evacs_json["items"]]
    show = run.invoke(cli.app, ["evacuation", "show", EVAC_DONE])
    assert show.exit_code == 0
    assert "audit trail" in show.stdout and "vm-old rebuilt on up1" in show.stdout and "define ok" in show.stdout
    show_json = json.loads(run.invoke(cli.app, ["evacuation", "show", EVAC_DONE, "-o", "json"]).stdout)
    assert [a["kind"] for a in show_json["audit"]][0] == "placement"
    missing = run.invoke(cli.app, ["evacuation", "show", "nope"])
    assert missing.exit_code == 1 and "evacuation_id" in missing.stderr


def test_host_flag_commands(run: CliRunner) -> None:
    r = run.invoke(cli.app, ["host", "disable", "up2"])
    assert r.exit_code == 0 and "enabled=no" in r.stdout
    r = run.invoke(cli.app, ["host", "reserve", "up2"])
    assert r.exit_code == 0 and "reserved=yes" in r.stdout
    assert run.invoke(cli.app, ["host", "unreserve", "up2"]).exit_code == 0
    r = run.invoke(cli.app, ["host", "enable", "up2"])
    assert r.exit_code == 0 and "enabled=yes reserved=no" in r.stdout
    r = run.invoke(cli.app, ["host", "enable", "ghost"])
    assert r.exit_code == 1 and "unknown host 'ghost'" in r.stderr


def write_bundle(path: Path, text: str, bodies: dict[str, str]) -> Path:
    path.write_text(text + "".join(f"--- file {p}\n{b}" for p, b in bodies.items()))
    return path


def test_template_check_offline_and_add(run: CliRunner, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "web.evt", TEMPLATE, BODIES)
    r = run.invoke(cli.app, ["template", "check", str(good), "--value", "ADMIN_EMAIL=ops@example.com",
                             "--value", "IP_ADDRESS=10.1.2.3"])
    assert r.exit_code == 0, r.output
    assert "ip=10.1.2.3 root=/var/www/ port=80 to=ops@example.com" in r.stdout
    r = run.invoke(cli.app, ["template", "check", str(good)])
    assert r.exit_code == 1 and "line 4, column 3, item 'ADMIN_EMAIL'" in r.stderr
    bad = write_bundle(tmp_path / "bad.evt", "metadata {\n  A : nosuchtype;\n}\nmap { /a }\n", {"/a": "x"})
    r = run.invoke(cli.app, ["template", "check", str(bad)])
    assert r.exit_code == 1 and "line 2, column 7" in r.stderr and "unknown type 'nosuchtype'" in r.stderr
    assert run.invoke(cli.app, ["template", "check", str(tmp_path / "absent.evt")]).exit_code == 1

    added = run.invoke(cli.app, ["template", "add", "cli-web", str(good)])
    assert added.exit_code == 0 and "template cli-web version 1 registered" in added.stdout
    again = run.invoke(cli.app, ["template", "add", "cli-web", str(good)])
    assert again.exit_code == 0 and "version 1 unchanged" in again.stdout
    refused = run.invoke(cli.app, ["template", "add", "cli-bad", str(bad)])
    assert refused.exit_code == 1 and "line 2, column 7" in refused.stderr and "HTTP 422" in refused.stderr
