"""`evacctl`: the operator's command line. Everything but `demo`, `version` and
`template check` talks to the status API (services.evacctl.client)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from services.evacctl.client import ApiClient, ApiError, ApiUnreachable

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Evacuate: high availability for VMs.")
host_app = typer.Typer(no_args_is_help=True,
                       help="Change a host's flags as an evacuation target; maintenance and the manual fence.")
evacuation_app = typer.Typer(no_args_is_help=True, help="One evacuation.")
template_app = typer.Typer(no_args_is_help=True, help="Server templates: check offline, register.")
app.add_typer(host_app, name="host")
app.add_typer(evacuation_app, name="evacuation")
app.add_typer(template_app, name="template")
console = Console()
errors = Console(stderr=True)


@app.command()
def demo(keep: bool = typer.Option(False, help="Keep the work directory (logs, node XML) afterwards.")) -> None:
    """Start everything on embedded defaults, fail a simulated host, show its evacuation."""
    from services.evacctl.demo import main as demo_main

    raise typer.Exit(demo_main(keep=keep))


@app.command()
def up(api_port: int = typer.Option(None, help="API port (default EVACUATE_API_PORT or 8780)"),
       profile: str = typer.Option(None, help="Detector timing profile: production | aggressive"),
       heartbeat_interval: float = typer.Option(None, help="Seconds between executor heartbeats")) -> None:
    """Run the control plane in the foreground (embedded broker and PostgreSQL unless configured)."""
    from services.evacctl.up import main as up_main

    raise typer.Exit(up_main(api_port, heartbeat_interval, profile))


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as v

    typer.echo(v("evacuate"))


# --- the status API's client -----------------------------------------------------------


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


API_URL = typer.Option("", "--api-url", envvar="EVACUATE_API_URL", help="Status API URL [default: "
                       "http://127.0.0.1:8780]", show_default=False)
TOKEN = typer.Option("", "--token", envvar="EVACUATE_API_TOKEN", help="Bearer token", show_default=False)
OUTPUT = typer.Option(Output.TABLE, "--output", "-o", help="table or json")
INSTANCE = typer.Option(None, "--instance", help="Only this instance (uuid); repeatable")
VALUE = typer.Option(None, "--value", help="NAME=VALUE for a metadata item (or a built-in); repeatable")


@contextmanager
def api_errors() -> Iterator[None]:
    """API unreachable: exit 3 with the URL; the API refused: exit 1 with its message."""
    try:
        yield
    except ApiUnreachable as exc:
        errors.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(3) from None
    except ApiError as exc:
        errors.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None


def show(data: Any, output: Output, table: Callable[[Any], Table]) -> None:
    if output is Output.JSON:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        console.print(table(data))


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


STATE_STYLE = {"up": "green", "suspect": "yellow", "fencing": "magenta", "down": "red", "isolated": "cyan"}


def hosts_table(data: dict[str, Any]) -> Table:
    t = Table("host", "state", "why", "last heartbeat", "fence", "vcpus used/total", "memory MiB used/total",
              "instances", "enabled", "reserved", title="hosts")
    for h in data["items"]:
        style = STATE_STYLE.get(h["state"], "")
        cap, use = h["capacity"], h["usage"]
        t.add_row(h["name"], f"[{style}]{h['state']}[/]" if style else h["state"], h["state_reason"] or "-",
                  _when(h["last_heartbeat"]), h["fence"]["driver"], f"{use['vcpus']}/{cap['vcpus']}",
                  f"{use['memory_mib']}/{cap['memory_mib']}", str(use["instances"]), _text(h["enabled"]),
                  _text(h["reserved"]))
    return t


def instances_table(data: dict[str, Any]) -> Table:
    t = Table("uuid", "name", "host", "power", "ha", "priority", "template", "evacuable",
              title=f"instances ({len(data['items'])} of {data['total']})")
    for i in data["items"]:
        evac = "yes" if i["evacuable"] else f"no: {i['not_evacuable_reason'] or ''}"
        t.add_row(i["uuid"], i["name"], i["host"], i["power_state"], _text(i["ha"]), str(i["priority"]),
                  _text(i["template"]), evac)
    return t


def evacuations_table(data: dict[str, Any]) -> Table:
    t = Table("id", "source", "trigger", "status", "items done/total", "target", "created", "completed", "reason",
              title=f"evacuations ({len(data['items'])} of {data['total']})")
    for e in data["items"]:
        c = e["counts"]
        t.add_row(e["id"], e["source"], e["trigger"], e["status"], f"{c['done']}/{c['items']}", _text(e["target"]),
                  _when(e["created_at"]), _when(e["completed_at"]), e["reason"])
    return t


def evacuation_tables(e: dict[str, Any]) -> Table:
    outer = Table.grid(padding=(1, 0))
    outer.add_row(f"evacuation [bold]{e['id']}[/] of [bold]{e['source']}[/] ({e['trigger']}): "
                  f"[bold]{e['status']}[/] - {e['reason']}")
    items = Table("instance", "target", "attempt", "status", "reason", "steps", title="items")
    for i in e["items"]:
        steps = ", ".join(f"{s['name']} {'ok' if s['ok'] else 'FAILED'} {s['seconds']:.2f}s" for s in i["steps"])
        items.add_row(i["instance_name"], _text(i["target"]), str(i["attempt"]), i["status"], i["reason"],
                      steps or "-")
    outer.add_row(items)
    trail = Table("at", "kind", "host", "detail", title="audit trail (why)")
    for a in e["audit"]:
        trail.add_row(_when(a["at"]), a["kind"], _text(a["host"]), a["detail"])
    outer.add_row(trail)
    return outer


@app.command()
def hosts(output: Output = OUTPUT, api_url: str = API_URL, token: str = TOKEN) -> None:
    """Every host: state and why, last heartbeat, fence driver, capacity and usage, flags."""
    with api_errors():
        show(ApiClient(api_url, token).get("/v1/hosts"), output, hosts_table)


@app.command()
def instances(host: str = typer.Option(None, "--host", help="Only the instances of this host"),
              limit: int = typer.Option(1000, help="At most this many"),
              output: Output = OUTPUT, api_url: str = API_URL, token: str = TOKEN) -> None:
    """Instances with their host, power state, HA policy, template and whether they can be evacuated."""
    with api_errors():
        show(ApiClient(api_url, token).get("/v1/instances", host=host, limit=limit), output, instances_table)


@app.command()
def evacuations(source: str = typer.Option(None, "--source", help="Only evacuations of this host"),
                status: str = typer.Option(None, "--status", help="running, completed, failed, refused, ..."),
                limit: int = typer.Option(50, help="At most this many, newest first"),
                output: Output = OUTPUT, api_url: str = API_URL, token: str = TOKEN) -> None:
    """Evacuations, newest first."""
    with api_errors():
        data = ApiClient(api_url, token).get("/v1/evacuations", source=source, status=status, limit=limit)
        show(data, output, evacuations_table)


@evacuation_app.command("show")
def evacuation_show(evacuation_id: str, output: Output = OUTPUT, api_url: str = API_URL, token: str = TOKEN) -> None:
    """One evacuation: every item (target, attempts, steps) and the audit trail of its decisions."""
    with api_errors():
        show(ApiClient(api_url, token).get(f"/v1/evacuations/{evacuation_id}"), output, evacuation_tables)


@app.command()
def evacuate(host: str,
             target: str = typer.Option(None, "--target", help="Put every instance on this host"),
             instance: list[str] | None = INSTANCE,
             wait: bool = typer.Option(False, "--wait", help="Wait until the evacuation closes; exit 0 if completed"),
             timeout: float = typer.Option(600.0, help="Seconds --wait waits at most"),
             api_url: str = API_URL, token: str = TOKEN) -> None:
    """Request the evacuation of a host that is down, fencing or isolated."""
    client = ApiClient(api_url, token)
    with api_errors():
        body: dict[str, Any] = {"target": target, "instances": instance or []}
        accepted = client.post(f"/v1/hosts/{host}/evacuate", body)
        console.print(f"evacuation of {host} requested (message {accepted['message_id']})", highlight=False)
        if not wait:
            return
        evac = wait_closed(client, accepted["message_id"], timeout)
        if evac is None:
            errors.print(f"error: the evacuation of {host} did not close within {timeout:.0f}s", highlight=False)
            raise typer.Exit(1)
        console.print(evacuation_tables(client.get(f"/v1/evacuations/{evac['id']}")))
    raise typer.Exit(0 if evac["status"] == "completed" else 1)


def wait_closed(client: ApiClient, message_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    with console.status("waiting for the planner..."):
        while time.monotonic() < deadline:
            found = client.get("/v1/evacuations", trigger_id=message_id)["items"]
            if found and found[0]["status"] != "running":
                return dict(found[0])
            time.sleep(0.5)
    return None


@app.command("watch")
def watch_command(once: bool = typer.Option(False, "--once", help="Print one snapshot and exit"),
                  seconds: float = typer.Option(None, "--for", min=0, help="Stop after SECONDS (default: Ctrl-C)"),
                  stream: bool = typer.Option(True, "--stream/--no-stream",
                                              help="Follow the API's event stream, or only poll"),
                  poll: float = typer.Option(2.0, "--poll", min=0.2, help="Seconds between reads when polling"),
                  output: Output = OUTPUT, api_url: str = API_URL, token: str = TOKEN) -> None:
    """Host states and evacuation progress, live (fed by the API's event stream; polls if it is unavailable).
    With --output json: the events as JSON lines."""
    from services.evacctl.watch import watch

    with api_errors():
        try:
            watch(ApiClient(api_url, token), console, once=once, seconds=seconds, as_json=output is Output.JSON,
                  stream=stream, poll=poll)
        except KeyboardInterrupt:
            pass


def _host_command(action: str, doc: str) -> None:
    def command(host: str, api_url: str = API_URL, token: str = TOKEN) -> None:
        with api_errors():
            h = ApiClient(api_url, token).post(f"/v1/hosts/{host}/{action}")
        console.print(f"host {h['name']}: enabled={_text(h['enabled'])} reserved={_text(h['reserved'])}",
                      highlight=False)

    command.__doc__ = doc
    host_app.command(action)(command)


_host_command("enable", "Let the planner place evacuated instances on this host again.")
_host_command("disable", "Keep evacuated instances off this host.")
_host_command("reserve", "Keep this host for evacuations (reserved-host recovery).")
_host_command("unreserve", "Make a reserved host an ordinary target again.")
_host_command("maintenance", "Put a host into maintenance: its failure is not evacuated until it is enabled.")
_host_command("confirm-off", "Confirm a host is powered off (the manual fence): its VMs may then be evacuated.")
_host_command("force-down", "Evacuate an isolated host anyway (it may still run its VMs: be sure it is off).")

PLACEHOLDERS = {
    "IP_ADDRESS": "192.0.2.10", "IP_ADDRESSES": "192.0.2.10", "MAC_ADDRESS": "52:54:00:00:00:01",
    "HOSTNAME": "server-1", "INSTANCE_UUID": "00000000-0000-4000-8000-000000000001", "INSTANCE_NAME": "server-1",
    "HOST": "compute-1",
}


@template_app.command("check")
def template_check(bundle: Path,
                   value: list[str] | None = VALUE) -> None:
    """Parse a template bundle and render it offline with placeholder built-ins (no API needed)."""
    from services.templater.bundle import load_bundle
    from services.templater.template import BUILTINS, TemplateError, parse, render

    pairs = dict(v.partition("=")[::2] for v in value or [])
    try:
        text, bodies = load_bundle(bundle)
        template = parse(text)
        builtins = {**PLACEHOLDERS, **{k: v for k, v in pairs.items() if k in BUILTINS}}
        files = render(template, bodies, builtins, {k: v for k, v in pairs.items() if k not in BUILTINS})
    except TemplateError as exc:
        errors.print(f"error: {bundle}: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    except (OSError, UnicodeDecodeError) as exc:
        errors.print(f"error: cannot read {bundle}: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    for path, rendered in files.items():
        console.rule(path)
        console.print(rendered, highlight=False, markup=False, end="")
    console.print(f"{bundle}: ok ({len(template.items)} items, {len(files)} files)", highlight=False)


@template_app.command("add")
def template_add(name: str, bundle: Path, api_url: str = API_URL, token: str = TOKEN) -> None:
    """Register a template bundle (a new version of NAME) with the API, which checks it first."""
    from services.templater.bundle import load_bundle
    from services.templater.template import TemplateError

    try:
        text, bodies = load_bundle(bundle)
    except (OSError, UnicodeDecodeError, TemplateError) as exc:
        errors.print(f"error: cannot read {bundle}: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    with api_errors():
        out = ApiClient(api_url, token).post("/v1/templates", {"name": name, "text": text, "bodies": bodies})
    state = "registered" if out["created"] else "unchanged"
    console.print(f"template {out['name']} version {out['version']} {state}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
