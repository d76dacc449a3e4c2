"""`evacctl watch`: host states and evacuation progress, live.

The state is read from the API (/v1/hosts, /v1/evacuations) and read again whenever
the event stream (/v1/events/stream) says something happened; the stream's events are
shown as they come. When the stream is unavailable (an older API, a proxy that buffers
it, ``--no-stream``) the state is polled instead. ``--output json`` prints the events as
JSON lines (in polling mode: a snapshot line whenever the state changed)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.evacctl.client import ApiClient, ApiError, ApiUnreachable, SseEvent

STATE_STYLE = {"up": "green", "suspect": "yellow", "fencing": "magenta", "down": "red", "isolated": "cyan"}
STATE_ORDER = ("up", "suspect", "fencing", "down", "isolated", "returning", "maintenance")
REFRESH_AFTER_EVENT = 0.3  # seconds: one re-read for a burst of events
RECENT_CLOSED = 3
SHOWN_EVENTS = 12


def snapshot(client: ApiClient) -> dict[str, Any]:
    """Hosts, and the running evacuations (with their items) plus the last closed ones."""
    hosts = client.get("/v1/hosts")["items"]
    evacs = client.get("/v1/evacuations", limit=20)["items"]
    running = [client.get(f"/v1/evacuations/{e['id']}") for e in evacs if e["status"] == "running"]
    closed = [e for e in evacs if e["status"] != "running"][:RECENT_CLOSED]
    return {"hosts": hosts, "running": running, "recent": closed}


def _when(value: str | None) -> str:
    return value.replace("T", " ")[11:19] if value else "-"


def hosts_by_state(hosts: list[dict[str, Any]]) -> Table:
    t = Table("state", "hosts", title="hosts by state", title_justify="left")
    groups: dict[str, list[dict[str, Any]]] = {}
    for h in hosts:
        groups.setdefault(h["state"], []).append(h)
    for state in [*STATE_ORDER, *sorted(set(groups) - set(STATE_ORDER))]:
        if state not in groups:
            continue
        style = STATE_STYLE.get(state, "")
        names = Text(", ").join(Text(h["name"] + (f" ({h['state_reason']})" if h["state_reason"] and state != "up"
                                                  else "")) for h in groups[state])
        t.add_row(Text(f"{state} ({len(groups[state])})", style=style), names)
    return t


def evacuation_table(e: dict[str, Any]) -> Table:
    c = e["counts"]
    t = Table("instance", "target", "attempt", "status", "reason", title_justify="left",
              title=f"evacuation {e['id']} of {e['source']} ({e['trigger']}): {e['status']}, "
                    f"{c['done']}/{c['items']} rebuilt" + (f", {c['pending']} pending" if c["pending"] else ""))
    for i in e.get("items", []):
        t.add_row(i["instance_name"], i["target"] or "-", str(i["attempt"]), i["status"], i["reason"] or "")
    return t


def render(snap: dict[str, Any], events: list[dict[str, Any]], status: str) -> RenderableType:
    parts: list[RenderableType] = [Text(status, style="dim"), hosts_by_state(snap["hosts"])]
    if snap["running"]:
        parts += [evacuation_table(e) for e in snap["running"]]
    else:
        parts.append(Text("no evacuation in progress"))
    for e in snap["recent"]:
        c = e["counts"]
        parts.append(Text(f"last: {e['source']} {e['status']} ({c['done']}/{c['items']} rebuilt) "
                          f"closed {_when(e['completed_at'])}"))
    if events:
        t = Table("at", "event", "what", title="events", title_justify="left")
        for ev in events[-SHOWN_EVENTS:]:
            t.add_row(_when(ev["at"]), ev["type"], ev["text"])
        parts.append(t)
    return Group(*parts)


@dataclass
class StreamReader:
    """The event stream in a thread (httpx is blocking here): every event and the end of
    the stream go into a queue. A lagged stream is reopened after the last event seen."""

    client: ApiClient
    out: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    last_id: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="evacctl-watch-stream").start()

    def _run(self) -> None:
        try:
            while True:
                for event in self.client.events(last_event_id=self.last_id):
                    self._take(event)
                    if event.event in ("lagged", "closed"):  # dropped, or the API restarts: open it again
                        break
                else:
                    self.out.put(("error", "the API closed the stream"))
                    return
        except (ApiUnreachable, ApiError) as exc:
            self.out.put(("error", str(exc)))

    def _take(self, event: SseEvent) -> None:
        if event.event == "message":
            self.last_id = event.id
            self.out.put(("event", event.json()))
        elif event.event == "comment":
            self.out.put(("alive", event.data))


def watch(client: ApiClient, console: Console, *, once: bool = False, seconds: float | None = None,
          as_json: bool = False, stream: bool = True, poll: float = 2.0) -> None:
    """Raises ApiUnreachable / ApiError when the first read fails (evacctl's exit codes)."""
    snap = snapshot(client)
    if once:
        if as_json:
            print(json.dumps({"type": "snapshot", **snap}, sort_keys=True, default=str), flush=True)
        else:
            console.print(render(snap, [], "snapshot"))
        return
    deadline = time.monotonic() + seconds if seconds is not None else None
    reader = StreamReader(client)
    if stream:
        reader.start()
    mode = "stream: connecting" if stream else f"polling every {poll:g}s (--no-stream)"
    events: deque[dict[str, Any]] = deque(maxlen=200)
    last_json = ""
    due = time.monotonic() + poll if not stream else None  # next re-read
    live = None if as_json else Live(render(snap, [], mode), console=console, auto_refresh=False)
    with live or contextlib.nullcontext():
        while deadline is None or time.monotonic() < deadline:
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            try:
                kind, value = reader.out.get(timeout=wait)
            except queue.Empty:
                kind, value = "", None
            if kind == "event":
                events.append(value)
                if as_json:
                    print(json.dumps(value, sort_keys=True), flush=True)
                due = min(due or float("inf"), time.monotonic() + REFRESH_AFTER_EVENT)
                mode = "stream: live"
            elif kind == "alive":
                mode = "stream: live"
            elif kind == "error":
                mode = f"polling every {poll:g}s (stream unavailable: {value})"
                stream = False
                due = time.monotonic()
            if due is not None and time.monotonic() >= due:
                try:
                    snap = snapshot(client)
                except (ApiUnreachable, ApiError) as exc:
                    mode = f"read failed, retrying: {exc}"
                due = None if stream else time.monotonic() + poll
                if as_json and not stream:
                    line = json.dumps({"type": "snapshot", **snap}, sort_keys=True, default=str)
                    if line != last_json:
                        print(line, flush=True)
                        last_json = line
            if live is not None:
                live.update(render(snap, list(events), mode), refresh=True)
