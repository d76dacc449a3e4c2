"""The live event stream over a real `python -m services.api` process and the session's
real broker: what is streamed (host and evacuation events, never heartbeats), the
token in the query string, keepalives, resuming after Last-Event-ID; the fan-out hub's
slow-client rule; an API that starts without a broker; the dashboard's files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.api.app import create_app, lifespan
from services.api.event_hub import CLOSED, LAGGED, EventHub
from services.common.bus import Producer, ensure_topics
from services.common.embedded import free_port, wait_port
from services.common.schemas import EvacuationCompleted, HostHeartbeat, NodeDown, RebuildResult
from services.common.settings import ApiSettings
from services.evacctl.client import SseEvent, SseParser

from .conftest import ADMIN, READER, TOKENS, auth

ROOT = Path(__file__).parents[2]


def start_api(settings: ApiSettings, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `python -m services.api` of its own, with a short keepalive; waits for its stream consumer."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap))
    port = free_port()
    env = dict(os.environ, EVACUATE_DATABASE_URL=settings.database_url, EVACUATE_API_TOKENS=TOKENS,
               EVACUATE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, EVACUATE_API_PORT=str(port),
               EVACUATE_API_SSE_KEEPALIVE="0.5", EVACUATE_FETCH_MAX_WAIT_MS="10", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.api"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_port(port, timeout=30, proc=proc)
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/v1/events", headers=auth(READER)).json()["consumer"] != "ready":
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    return proc, url


@pytest.fixture(scope="module")
def stream_api(api_settings: ApiSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = Path(tmp_path_factory.mktemp("stream-api")) / "api.log"
    proc, url = start_api(api_settings, log_path)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        assert "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture(scope="module")
async def producer(api_settings: ApiSettings) -> AsyncIterator[Producer]:
    p = Producer(api_settings.kafka_bootstrap, "test-events")
    await p.start()
    yield p
    await p.stop()


async def read_events(response: httpx.Response, until: int, timeout: float = 15) -> list[SseEvent]:
    """SSE events (comments included) until ``until`` non-comment events were read."""
    parser, out = SseParser(), []
    lines = response.aiter_lines()
    async with asyncio.timeout(timeout):
        while sum(e.event != "comment" for e in out) < until:
            event = parser.feed(await anext(lines))
            if event is not None:
                out.append(event)
    return out


async def test_streams_host_and_evacuation_events_but_no_heartbeats(stream_api: str, producer: Producer) -> None:
    async with httpx.AsyncClient(base_url=stream_api, timeout=20) as http, \
            http.stream("GET", "/v1/events/stream", headers=auth(READER)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        await producer.publish(HostHeartbeat(host="sse1", seq=1))
        down = await producer.publish(NodeDown(host="sse1", reason="3 heartbeats missed", fenced_by="process"))
        done = await producer.publish(EvacuationCompleted(evacuation_id="e-sse1", source="sse1", status="completed",
                                                          placed=2, failed=0, seconds=4.2))
        events = [e for e in await read_events(r, 2) if e.event != "comment"]
    # Two topics (host events, evacuations): the broker orders each, not the two together.
    by_id = {e.id: e for e in events}
    assert set(by_id) == {down.id, done.id}
    first, second = by_id[down.id], by_id[done.id]
    body = first.json()
    assert body == {**body, "id": down.id, "type": "NodeDown", "kind": "host", "host": "sse1", "state": "down",
                    "topic": "evacuate.host-events", "source": "test-events"}
    assert body["text"] == "sse1 down: fenced by process (3 heartbeats missed)"
    assert second.json()["evacuation_id"] == "e-sse1" and second.json()["kind"] == "evacuation"
    assert "2 rebuilt, 0 not" in second.json()["text"]


async def test_query_token_only_on_the_stream_and_keepalives(stream_api: str) -> None:
    async with httpx.AsyncClient(base_url=stream_api, timeout=20) as http:
        assert (await http.get("/v1/events/stream")).status_code == 401
        assert (await http.get("/v1/events/stream", params={"access_token": "wrong"})).status_code == 401
        assert (await http.get("/v1/hosts", params={"access_token": READER})).status_code == 401
        assert (await http.get("/v1/events/stream", params={"types": "HostHeartbeat"},
                               headers=auth(READER))).status_code == 422
        async with http.stream("GET", "/v1/events/stream", params={"access_token": ADMIN}) as r:
            assert r.status_code == 200
            parser, comments = SseParser(), []
            lines = r.aiter_lines()
            async with asyncio.timeout(10):
                while len(comments) < 3:
                    event = parser.feed(await anext(lines))
                    if event is not None and event.event == "comment":
                        comments.append(event.data)
    assert comments[0].startswith("evacuate event stream; consumer ready") and comments[1:] == ["keepalive"] * 2


async def test_types_filter_and_resume_after_last_event_id(stream_api: str, producer: Producer) -> None:
    async with httpx.AsyncClient(base_url=stream_api, timeout=20) as http:
        async with http.stream("GET", "/v1/events/stream", params={"types": "RebuildResult"},
                               headers=auth(READER)) as r:
            await producer.publish(NodeDown(host="sse2", reason="r", fenced_by="process"))
            first = await producer.publish(RebuildResult(order_id="o1", evacuation_id="e-sse2", item_id="i1",
                                                         instance_uuid="u1", host="sse3", attempt=1, ok=True))
            (got,) = [e for e in await read_events(r, 1) if e.event != "comment"]
        assert got.id == first.id
        missed = await producer.publish(RebuildResult(order_id="o2", evacuation_id="e-sse2", item_id="i2",
                                                      instance_uuid="u2", host="sse3", attempt=1, ok=False,
                                                      error="lease held by sse2"))
        deadline = time.monotonic() + 10
        while missed.id not in [e["id"] for e in (await http.get("/v1/events", headers=auth(READER))).json()["items"]]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with http.stream("GET", "/v1/events/stream", params={"types": "RebuildResult"},
                               headers={**auth(READER), "Last-Event-ID": first.id}) as r:
            (again,) = [e for e in await read_events(r, 1) if e.event != "comment"]
        assert again.id == missed.id and "failed (attempt 1): lease held by sse2" in again.json()["text"]
        recent = (await http.get("/v1/events", params={"after": first.id, "types": "RebuildResult"},
                                 headers=auth(READER))).json()
        assert [e["id"] for e in recent["items"]] == [missed.id] and recent["consumer"] == "ready"


async def test_a_slow_subscriber_is_dropped_and_told_the_others_get_everything() -> None:
    hub = EventHub(queue_size=4)
    slow, quick = hub.subscribe(), hub.subscribe(types=["NodeDown"])
    received = []
    for n in range(10):
        hub.publish({"id": str(n), "type": "NodeDown"})
        received.append((await quick.queue.get())["id"])
    assert received == [str(n) for n in range(10)]
    assert slow.lagged and slow.queue.get_nowait() is LAGGED and slow.queue.empty()
    assert slow not in hub.subscribers and quick in hub.subscribers and hub.dropped == 1
    late = hub.subscribe(last_id="7")  # a reconnecting client catches up from the ring
    assert [late.queue.get_nowait()["id"] for _ in range(2)] == ["8", "9"]
    stranger = hub.subscribe(last_id="from-another-replica")  # the newest half queue, never a lag at once
    assert [stranger.queue.get_nowait()["id"] for _ in range(2)] == ["8", "9"] and stranger.queue.empty()
    hub.publish({"id": "10", "type": "NodeDown"})
    hub.close()  # the API stops: every stream ends at once, unread events or not
    assert quick.queue.get_nowait() is CLOSED and late.queue.get_nowait() is CLOSED and not hub.subscribers
    assert hub.subscribe().queue.get_nowait() is CLOSED


async def test_the_api_starts_and_serves_without_a_broker(api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    app = create_app(settings)
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        hosts = await c.get("/v1/hosts", headers=auth(READER))
        assert hosts.status_code == 200 and hosts.json()["total"] > 0
        await asyncio.sleep(0.5)
        status = (await c.get("/v1/events", headers=auth(READER))).json()
        assert status["consumer"] in ("starting", "reconnecting") and status["items"] == []


async def test_dashboard_files_are_served_without_a_token(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/dashboard.js">' in page.text and page.headers["referrer-policy"] == "no-referrer"
    script = await client.get("/dashboard/dashboard.js")
    assert script.status_code == 200 and "EventSource" in script.text
    assert (await client.get("/dashboard/dashboard.css")).status_code == 200
    assert (await client.get("/dashboard/..%2Fapp.py")).status_code == 404
    assert (await client.get("/dashboard/secrets.txt")).status_code == 404


def test_an_open_stream_does_not_hold_up_a_stopping_api(api_settings: ApiSettings, tmp_path: Path) -> None:
    proc, url = start_api(api_settings, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=20) as http, \
                http.stream("GET", "/v1/events/stream", headers=auth(READER)) as r:
            parser, lines = SseParser(), r.iter_lines()
            assert parser.feed(next(lines)) is None and parser.feed(next(lines)).event == "comment"  # type: ignore[union-attr]
            proc.terminate()
            started = time.monotonic()
            ends = [e for e in (parser.feed(line) for line in lines) if e is not None and e.event != "comment"]
        assert [e.event for e in ends] == ["closed"] and ends[0].json()["message"] == "the API is stopping"
        assert proc.wait(10) in (0, -15) and time.monotonic() - started < 4  # uvicorn re-raises SIGTERM once stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (tmp_path / "api.log").read_text()
