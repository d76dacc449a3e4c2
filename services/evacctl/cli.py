"""`evacctl`: the operator's command line."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Evacuate: high availability for VMs.")


@app.command()
def demo(keep: bool = typer.Option(False, help="Keep the work directory (logs, node XML) afterwards.")) -> None:
    """Start everything on embedded defaults, fail a simulated host, show its evacuation."""
    from services.evacctl.demo import main as demo_main

    raise typer.Exit(demo_main(keep=keep))


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as v

    typer.echo(v("evacuate"))


def main() -> None:
    app()
