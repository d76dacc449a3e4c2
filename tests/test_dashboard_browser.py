"""The dashboard in a real browser (Debian's chromium driven by Playwright) on the real
stack: detector, planner, templater, API and two simulated hosts as processes. A host's
executor is SIGKILLed; the page, fed by the live stream, shows the host go down and its
evacuation appear and complete, with a timeline. A screenshot is kept as an artifact
(tmp_path and artifacts/dashboard.png)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.embedded import EmbeddedBroker
from services.evacctl.stack import Stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("dashboard")), kafka_bootstrap=broker.bootstrap, fresh_database=True,
              database_url=os.environ.get("EVACUATE_DATABASE_URL", ""))
    s.start_infra()
    s.start_services()
    s.add_host(71, "dash1", vm_count=3, shutoff=1, local=0)
    s.add_host(72, "dash2", vm_count=3, shutoff=1, local=0)
    yield s
    s.stop()
    assert not s.tracebacks(), "a service logged a traceback"


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_dashboard_follows_a_host_failure_live(stack: Stack, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    api = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_token}"}, timeout=10)
    wait_for("the API and its stream consumer", lambda: api.get("/v1/events").json()["consumer"] == "ready")
    wait_for("both hosts up with their instances", lambda: all(
        h["state"] == "up" and h["usage"]["instances"] == 3
        for h in api.get("/v1/hosts").json()["items"]) and api.get("/v1/hosts").json()["total"] == 2)

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(f"{stack.api_url}/dashboard#token={stack.api_token}")
            page.wait_for_selector('.host[data-host="dash1"][data-state="up"]', timeout=30_000)
            page.wait_for_selector('#live[data-live="live"]', timeout=30_000)
            assert "token" not in page.url, "the token stays in the address bar"

            stack.kill("executor-dash1")
            page.wait_for_selector('.host[data-host="dash1"][data-state="down"]', timeout=60_000)
            page.wait_for_selector('.evac[data-source="dash1"]', timeout=60_000)
            page.wait_for_selector('.evac[data-source="dash1"][data-status="completed"]', timeout=90_000)
            card = page.locator('.evac[data-source="dash1"]')
            page.wait_for_function(
                "() => [...document.querySelectorAll('.evac[data-source=\"dash1\"] .timeline li')]"
                ".some(li => li.textContent.includes('EvacuationCompleted'))", timeout=30_000)
            timeline = card.locator(".timeline li").all_inner_texts()
            items = card.locator("tbody tr").all_inner_texts()
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)

            # A page opened afterwards gets the events from the API's recent ring.
            late = browser.new_page()
            late.goto(f"{stack.api_url}/dashboard#token={stack.api_token}")
            late.wait_for_selector('.evac[data-source="dash1"][data-status="completed"]', timeout=30_000)
            late_timeline = late.locator('.evac[data-source="dash1"] .timeline li').all_inner_texts()
        finally:
            browser.close()

    assert not problems, problems
    kinds = " ".join(timeline)
    assert "NodeDown" in kinds and "EvacuationPlan" in kinds and "EvacuationCompleted" in kinds, timeline
    assert kinds.index("NodeDown") < kinds.index("EvacuationCompleted")
    assert all(any(k in t for t in late_timeline) for k in ("NodeDown", "EvacuationCompleted")), late_timeline
    shared = [vm for vm in stack.vms["dash1"] if vm.shared]
    assert len(items) == len(shared) and all("dash2" in row and "done" in row for row in items), items
    assert shot.stat().st_size > 10_000
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "dashboard.png")
