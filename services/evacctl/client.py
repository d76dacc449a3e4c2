"""The status API's HTTP client for `evacctl`: one request function, two errors.

ApiUnreachable  nothing answers at the URL (evacctl exits 3)
ApiError        the API answered 4xx/5xx; carries its one-line message (evacctl exits 1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
