"""`evacctl watch` against a real `python -m services.api` process: the snapshot and the
live view through CliRunner (formatting), the polling mode, and one real subprocess run
that prints the stream's events as JSON lines; the SSE parser on its own."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from services.common.bus import Producer
from services.common.schemas import NodeDown
from services.common.settings import ApiSettings
from services.evacctl import cli
from services.evacctl.client import ApiClient, SseEvent, SseParser
from services.evacctl.watch import StreamReader

from .conftest import READER, auth
from .test_cli import ROOT


@pytest.fixture
def run(api_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setattr(cli.console, "width", 200)
    yield CliRunner(env={"EVACUATE_API_URL": api_server, "EVACUATE_API_TOKEN": READER})


def test_once_prints_hosts_by_state_and_evacuations(run: CliRunner, api_server: str) -> None:
    evacs = httpx.get(f"{api_server}/v1/evacuations", headers=auth(READER)).json()["items"]
    newest = next(e for e in evacs if e["status"] != "running")  # other tests of the session add some
    r = run.invoke(cli.app, ["watch", "--once"])
    assert r.exit_code == 0, r.output
    assert "hosts by state" in r.stdout and "snapshot" in r.stdout
    assert "down1 (fenced by process)" in r.stdout and "suspect1 (3 heartbeats missed)" in r.stdout
    c = newest["counts"]
    assert f"last: {newest['source']} {newest['status']} ({c['done']}/{c['items']} rebuilt)" in r.stdout
    snap = json.loads(run.invoke(cli.app, ["watch", "--once", "-o", "json"]).stdout)
    assert snap["type"] == "snapshot" and {"up1", "down1"} <= {h["name"] for h in snap["hosts"]}
    assert snap["recent"][0]["source"] and isinstance(snap["running"], list)


def test_live_view_follows_the_stream_for_a_while(run: CliRunner) -> None:
    started = time.monotonic()
    r = run.invoke(cli.app, ["watch", "--for", "1.5"])
    assert r.exit_code == 0, r.output
    assert 1.5 <= time.monotonic() - started < 10
    assert "stream: live" in r.stdout and "hosts by state" in r.stdout and "down1" in r.stdout


def test_polling_mode_prints_snapshots_as_json_lines(run: CliRunner) -> None:
    r = run.invoke(cli.app, ["watch", "--no-stream", "--poll", "0.3", "--for", "1.2", "-o", "json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines and all(line["type"] == "snapshot" for line in lines)  # one per change: the state is quiet here


def test_unreachable_api_exits_3(run: CliRunner) -> None:
    r = run.invoke(cli.app, ["watch", "--once", "--api-url", "http://127.0.0.1:9"])
    assert r.exit_code == 3 and "cannot reach the API" in r.stderr


def test_a_stream_that_cannot_be_opened_is_reported_for_the_fallback() -> None:
    reader = StreamReader(ApiClient("http://127.0.0.1:9", READER, timeout=2))
    reader.start()
    kind, why = reader.out.get(timeout=10)
    assert kind == "error" and "cannot reach the API at http://127.0.0.1:9" in why


async def test_a_real_watch_prints_events_as_json_lines(api_server: str, api_settings: ApiSettings) -> None:
    async with httpx.AsyncClient(base_url=api_server) as http:
        deadline = time.monotonic() + 30
        while (await http.get("/v1/events", headers=auth(READER))).json()["consumer"] != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    env = {"EVACUATE_API_URL": api_server, "EVACUATE_API_TOKEN": READER, "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.evacctl.cli", "watch", "--for", "20",
                                                "-o", "json", env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    producer = Producer(api_settings.kafka_bootstrap, "test-watch")
    await producer.start()
    sent: list[str] = []
    try:
        assert proc.stdout is not None
        line = b""
        async with asyncio.timeout(20):
            while not line:  # publish until the watcher, once subscribed, prints one
                sent.append((await producer.publish(NodeDown(host="watch1", reason="r", fenced_by="ipmi"))).id)
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), timeout=0.5)
                except TimeoutError:
                    pass
    finally:
        await producer.stop()
        proc.kill()
        await proc.wait()
    event = json.loads(line)
    assert event["type"] == "NodeDown" and event["host"] == "watch1" and event["id"] in sent
    assert event["text"] == "watch1 down: fenced by ipmi (r)"


def test_sse_parser() -> None:
    p = SseParser()
    lines = [": hello", "retry: 2000", "", "id: 1", "data: {\"a\":", "data: 1}", "", "event: lagged", "data: {}", "",
             "id: 2", "data:x", "", "data: y", ""]
    got = [e for e in (p.feed(line) for line in lines) if e is not None]
    assert got == [SseEvent("comment", "hello"), SseEvent("message", "{\"a\":\n1}", "1"),
                   SseEvent("lagged", "{}", "1"), SseEvent("message", "x", "2"), SseEvent("message", "y", "2")]
