"""No Docker engine runs on the build machines, so the compose file and the Dockerfile
are checked here: structure, settings, ports, healthchecks, topics, and the Dockerfile's
install steps run as a script on this machine."""

from __future__ import annotations

import re
import shutil
import subprocess
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import settings as settings_module
from services.common.brokerwatch import EPOCH_TOPIC
from services.common.bus import PARTITIONS
from services.common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SETTINGS_CLASSES = {
    name.removesuffix("Settings").lower(): cls
    for name, cls in vars(settings_module).items()
    if isinstance(cls, type) and issubclass(cls, CommonSettings) and cls is not CommonSettings
}
KNOWN_VARS = {f"EVACUATE_{f.upper()}" for cls in SETTINGS_CLASSES.values() for f in cls.model_fields}


def module_of(svc: dict[str, Any]) -> str | None:
    cmd = svc.get("command") or []
    if "-m" in cmd:
        return str(cmd[cmd.index("-m") + 1])
    return None


def test_every_service_has_an_image_or_a_build_with_a_dockerfile() -> None:
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
            assert (ROOT / ctx / "Dockerfile").exists(), name
        if module_of(svc):  # one of ours: built here, or the image the build produces
            assert "build" in svc or svc["image"] == "evacuate:latest", name


def test_every_evacuate_variable_is_a_real_setting_and_required_ones_are_set() -> None:
    for name, svc in SERVICES.items():
        env = svc.get("environment") or {}
        for var in env:
            if var.startswith("EVACUATE_"):
                assert var in KNOWN_VARS, f"{name}: {var} is read by no settings model (typo?)"
        module = module_of(svc)
        if module is None:
            continue
        service = module.split(".")[1]
        cls = SETTINGS_CLASSES["executor" if service == "evacctl" else service]
        for field, info in cls.model_fields.items():
            if info.is_required():
                assert f"EVACUATE_{field.upper()}" in env, f"{name}: EVACUATE_{field.upper()} has no default"
        assert env.get("EVACUATE_KAFKA_BOOTSTRAP"), f"{name} needs the broker"
        if service in ("detector", "planner", "templater", "api"):
            assert env.get("EVACUATE_DATABASE_URL"), f"{name} needs the database"
        else:
            assert not env.get("EVACUATE_DATABASE_URL"), f"{name}: an executor holds no database credentials"


def test_host_ports_do_not_clash() -> None:
    seen: dict[str, str] = {}
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            host_port = str(port).split(":")[-2] if ":" in str(port) else str(port)
            assert host_port not in seen, f"{name} and {seen.get(host_port)} both publish {host_port}"
            seen[host_port] = name


def test_long_running_services_have_healthchecks_and_dependencies_exist() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") == "no" and "profiles" not in svc:
            continue  # a one-shot init step
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert SERVICES[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: it has no healthcheck"


def test_kafka_is_kraft_and_init_creates_every_topic_with_its_partitions() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    script = "\n".join(SERVICES["kafka-init"]["command"])
    specs = dict((t, int(p)) for t, p in re.findall(r"(evacuate\.[a-z-]+):(\d+):-?\d+", script))
    assert specs.pop(EPOCH_TOPIC) == 1 and f"{EPOCH_TOPIC}:1:-1" in script  # the marker is kept for ever
    assert specs == {str(t): n for t, n in PARTITIONS.items()}


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text


@pytest.mark.slow
def test_dockerfile_install_steps_run_here(tmp_path: Path) -> None:
    """The Dockerfile's RUN steps, outside Docker: the Debian packages are what
    scripts/setup.sh installed (checked, not re-installed), the pip step runs as written
    into a fresh virtualenv from a copy of what the Dockerfile COPYs, and the installed
    package imports every service."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runs = re.findall(r"^RUN (.+)$", text, re.M)
    apt = [r for r in runs if "apt-get install" in r]
    assert apt and "libvirt-dev" in apt[0] and "pkg-config" in apt[0]
    assert subprocess.run(["pkg-config", "--exists", "libvirt"]).returncode == 0
    pip_steps = [r for r in runs if r.startswith("pip install")]
    assert len(pip_steps) == 1
    app = tmp_path / "app"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            s = ROOT / src
            (shutil.copytree(s, app / src) if s.is_dir() else (app.mkdir(exist_ok=True), shutil.copy(s, app / src)))
    venv.create(tmp_path / "venv", with_pip=True)
    py = tmp_path / "venv" / "bin" / "python"
    step = pip_steps[0].replace("--no-cache-dir", "")  # same install, but reuse this machine's cache
    subprocess.run(f"{py} -m {step}", shell=True, cwd=app, check=True, capture_output=True)
    out = subprocess.run([str(py), "-c", "import services.detector.service, services.planner.service,"
                          " services.templater.service, services.executor.service, services.api.app; print('ok')"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
