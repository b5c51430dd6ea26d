"""The ``simprune`` command line: local pruning, analysis, and the service commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="simprune",
    help="Structured (filter) pruning for CNNs: prune locally, or run/drive the simprune service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from simprune.cli import engine_cmds, service_cmds

    engine_cmds.register(app)
    service_cmds.register(app)


def main() -> None:
    """Console-script entry point."""
    _register()
    app()
