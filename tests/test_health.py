"""/healthz and /metrics of a service process (the templater here), over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from services.common.embedded import EmbeddedBroker, free_port


def first_healthz(port: int, proc: subprocess.Popen[bytes]) -> httpx.Response:
    """The first answer of /healthz once the service listens."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "no /healthz"
            time.sleep(0.1)


def test_service_serves_healthz_and_metrics(broker: EmbeddedBroker, database_url: str) -> None:
    port = free_port()
    env = dict(os.environ, EVACUATE_KAFKA_BOOTSTRAP=broker.bootstrap, EVACUATE_DATABASE_URL=database_url,
               EVACUATE_HEALTH_PORT=str(port), EVACUATE_FETCH_MAX_WAIT_MS="10")
    proc = subprocess.Popen([sys.executable, "-m", "services.templater"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = first_healthz(port, proc)
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["broker"] == "ok"
        m = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        assert m.status_code == 200 and "evacuate_messages_handled_total" in m.text
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_healthz_says_what_is_unreachable(database_url: str) -> None:
    port, dead = free_port(), free_port()
    env = dict(os.environ, EVACUATE_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead}", EVACUATE_DATABASE_URL=database_url,
               EVACUATE_HEALTH_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "services.templater"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = first_healthz(port, proc)
        assert r.status_code == 503
        assert f"127.0.0.1:{dead}" in r.json()["broker"]
    finally:
        proc.terminate()
        proc.wait(10)
