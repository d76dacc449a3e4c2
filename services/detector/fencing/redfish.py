"""The `redfish` fence: power the host off through its BMC's Redfish API.

The host's fence target is the BMC's base URL (``https://bmc``), or the URL of the
computer system itself (``https://bmc/redfish/v1/Systems/<id>``). With only the base URL
the BMC must manage exactly one system. The fence POSTs ``ComputerSystem.Reset`` with
``ForceOff`` (to the action target the system advertises) and then polls the system
until its ``PowerState`` reads ``Off``: only that reading is proof. A system already Off
is fenced. Every failure — wrong credentials, an unreachable BMC, a refused reset, a
system that never reads Off within the time limit — is a failed FenceOutcome that says
why; the fence never raises.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from services.detector.fencing import FenceOutcome

SYSTEMS = "/redfish/v1/Systems"


class _Failed(Exception):
    """A fence step failed; the message is the reason given to the detector."""


def _no_password() -> str:
    return ""


def _redfish_message(resp: httpx.Response) -> str:
    """The error message a Redfish service puts in its body, if any."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:200]
    if not isinstance(body, dict):
        return ""
    err = body.get("error")
    if not isinstance(err, dict):
        return ""
    info = err.get("@Message.ExtendedInfo")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("Message"):
        return str(info[0]["Message"])
    return str(err.get("message", ""))


def _status(resp: httpx.Response, what: str) -> str:
    text = f"HTTP {resp.status_code} {resp.reason_phrase} from {what}"
    if resp.status_code in (401, 403):
        text += " (check EVACUATE_FENCE_USERNAME / EVACUATE_FENCE_PASSWORD)"
    msg = _redfish_message(resp)
    return f"{text}: {msg}" if msg else text


class RedfishFencer:
    name = "redfish"

    def __init__(
        self,
        username: str = "",
        password: Callable[[], str] = _no_password,
        *,
        verify_tls: bool = True,
        ca_file: str = "",
        request_timeout: float = 10.0,
        confirm_timeout: float = 25.0,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.request_timeout = request_timeout
        self.confirm_timeout = confirm_timeout
        self.poll_interval = poll_interval
        self.transport = transport  # tests only: a BMC that never powers off

    async def fence(self, host: str, target: str) -> FenceOutcome:
        try:
            base, system_path = _parse_target(target)
            verify: bool | ssl.SSLContext = self.verify_tls
            if self.verify_tls and self.ca_file:
                verify = ssl.create_default_context(cafile=self.ca_file)
            auth = httpx.BasicAuth(self.username, self.password()) if self.username else None
            async with httpx.AsyncClient(
                base_url=base, auth=auth, verify=verify, timeout=self.request_timeout,
                transport=self.transport, follow_redirects=True,
                headers={"Accept": "application/json", "OData-Version": "4.0"},
            ) as client:
                reason = await self._fence(client, base, system_path, time.monotonic() + self.confirm_timeout)
            return FenceOutcome(True, f"{host}: {reason}")
        except _Failed as exc:
            return FenceOutcome(False, f"redfish fence of {host} failed: {exc}")
        except OSError as exc:  # the password file, the CA file
            return FenceOutcome(False, f"redfish fence of {host} failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a fence reports, it never raises
            return FenceOutcome(False, f"redfish fence of {host} failed: {type(exc).__name__}: {exc}")

    async def _fence(self, client: httpx.AsyncClient, base: str, system_path: str, deadline: float) -> str:
        if not system_path:
            system_path = await self._discover(client, base, deadline)
        url = base + system_path
        system = await self._get_json(client, system_path, url, deadline)
        if system.get("PowerState") == "Off":
            return f"{url} already reports PowerState Off"
        action_path = _reset_target(system) or system_path + "/Actions/ComputerSystem.Reset"
        resp = await self._request(client, "POST", action_path, base + action_path, deadline,
                                   json={"ResetType": "ForceOff"})
        if resp.status_code not in (200, 202, 204):
            raise _Failed(_status(resp, f"POST {base + action_path} (ForceOff)"))
        start = time.monotonic()
        last, error = f"PowerState {system.get('PowerState')!r}", ""
        while True:
            try:
                system = await self._get_json(client, system_path, url, deadline)
                state = system.get("PowerState")
                if state == "Off":
                    return (f"powered off via Redfish ForceOff: {url} reports PowerState Off "
                            f"after {time.monotonic() - start:.1f} s")
                last, error = f"PowerState {state!r}", ""
            except _Failed as exc:
                error = str(exc)  # a BMC busy resetting may drop a poll: keep polling until the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                break
            await asyncio.sleep(min(self.poll_interval, remaining - 0.05))
        raise _Failed(f"ForceOff accepted but {url} did not report PowerState Off within "
                      f"{self.confirm_timeout:g} s (last: {last}{'; then ' + error if error else ''})")

    async def _discover(self, client: httpx.AsyncClient, base: str, deadline: float) -> str:
        coll = await self._get_json(client, SYSTEMS, base + SYSTEMS, deadline)
        members = [m.get("@odata.id") for m in coll.get("Members", []) if isinstance(m, dict)]
        paths = [m for m in members if isinstance(m, str) and m.startswith("/")]
        if len(paths) != 1:
            raise _Failed(f"{base + SYSTEMS} lists {len(paths)} systems ({', '.join(paths) or 'none'}); "
                          f"the fence target must name one: {base}{SYSTEMS}/<id>")
        return paths[0].rstrip("/")

    async def _get_json(self, client: httpx.AsyncClient, path: str, url: str, deadline: float) -> dict[str, Any]:
        resp = await self._request(client, "GET", path, url, deadline)
        if resp.status_code != 200:
            raise _Failed(_status(resp, f"GET {url}"))
        try:
            body = resp.json()
        except ValueError:
            raise _Failed(f"GET {url} did not answer JSON: {resp.text.strip()[:200]!r}") from None
        if not isinstance(body, dict):
            raise _Failed(f"GET {url} answered {type(body).__name__}, not a Redfish resource")
        return body

    async def _request(
        self, client: httpx.AsyncClient, method: str, path: str, url: str, deadline: float, **kw: Any
    ) -> httpx.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed(f"{method} {url}: no time left of the {self.confirm_timeout:g} s fence limit")
        try:
            return await client.request(method, path, timeout=min(self.request_timeout, remaining), **kw)
        except httpx.ConnectError as exc:
            raise _Failed(f"cannot reach the BMC at {url}: connection failed: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            raise _Failed(f"{method} {url} timed out: {exc or type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise _Failed(f"{method} {url}: {type(exc).__name__}: {exc}") from None


def _reset_target(system: dict[str, Any]) -> str:
    """The Reset action target the system advertises, if it is a path on the same BMC
    (the credentials are never sent to another origin)."""
    actions = system.get("Actions")
    reset = actions.get("#ComputerSystem.Reset") if isinstance(actions, dict) else None
    target = reset.get("target") if isinstance(reset, dict) else None
    return target if isinstance(target, str) and target.startswith("/") else ""


def _parse_target(target: str) -> tuple[str, str]:
    """(origin, system path or "") of a fence target; _Failed if it is not a BMC URL."""
    text = target.strip()
    if not text:
        raise _Failed("no fence target: the host's heartbeat names no BMC URL (EVACUATE_FENCE_TARGET)")
    try:
        url = httpx.URL(text)
    except Exception as exc:  # noqa: BLE001 - httpx raises several kinds for a malformed URL
        raise _Failed(f"fence target {text!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _Failed(f"fence target {text!r} is not an http(s) BMC URL (e.g. https://bmc.example)")
    if url.username or url.password:
        raise _Failed("the fence target must not carry credentials (it travels in heartbeats); "
                      "use EVACUATE_FENCE_USERNAME / EVACUATE_FENCE_PASSWORD")
    if url.query or url.fragment:
        raise _Failed(f"fence target {text!r} must not have a query or fragment")
    origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
    path = url.path.rstrip("/")
    if path in ("", "/redfish", "/redfish/v1", SYSTEMS):
        return origin, ""
    parts = path[len(SYSTEMS) + 1:].split("/") if path.startswith(SYSTEMS + "/") else []
    if len(parts) != 1 or not parts[0]:
        raise _Failed(f"fence target {text!r}: the path must be empty or {SYSTEMS}/<id>")
    return origin, path
