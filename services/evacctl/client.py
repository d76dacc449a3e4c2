"""The status API's HTTP client for `evacctl`: one request function, two errors, and a
reader of the event stream (Server-Sent Events).

ApiUnreachable  nothing answers at the URL (evacctl exits 3)
ApiError        the API answered 4xx/5xx; carries its one-line message (evacctl exits 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8780"


class ApiUnreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the API at {url}: {reason} (set EVACUATE_API_URL or --api-url)")
        self.url = url


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        hint = " (set EVACUATE_API_TOKEN or --token)" if status == 401 else ""
        super().__init__(f"{message}{hint} [HTTP {status}]")
        self.status = status
        self.message = message
        self.body = body


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
    return str(body)


@dataclass
class ApiClient:
    url: str = ""
    token: str = ""
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self.url = (self.url or os.environ.get("EVACUATE_API_URL") or DEFAULT_URL).rstrip("/")
        self.token = self.token or os.environ.get("EVACUATE_API_TOKEN", "")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers) as http:
                response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, error_message(response), body)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def events(self, read_timeout: float = 60.0, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """The live event stream, comments (keepalives) included, until the server ends it;
        raises ApiUnreachable / ApiError like ``request``."""
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        try:
            with httpx.Client(base_url=self.url, timeout=timeout, headers=headers) as http, \
                    http.stream("GET", "/v1/events/stream") as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, error_message(response))
                parser = SseParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.url, str(exc) or type(exc).__name__) from None


@dataclass
class SseEvent:
    event: str = "message"  # "comment" for a comment line (the server's keepalive)
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseParser:
    """Server-Sent Events, line by line (the WHATWG event-stream format): ``feed`` returns
    an event when a blank line ends one, and every comment line as its own event."""

    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            out = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._data, self._event = [], ""
            return out
        if line.startswith(":"):
            return SseEvent("comment", line[1:].strip())
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value  # the last id seen sticks, as in a browser
        return None
