"""The ``simprune`` command line: local pruning and analysis, ``submit`` to a server, and plugins.

The engine's commands live in :mod:`simprune.cli.local`, ``submit`` (a client of the REST service,
httpx only) in :mod:`simprune.cli.remote`. Other command groups are plugins: callables ``register(app)``
declared in the ``simprune.cli`` entry-point group. The server commands (``serve``, ``worker``, ``keys``,
``db``) are such a plugin (``server = "app.cli:register"``), so this package never imports the server; when
the plugin cannot be imported (the ``server`` extra is not installed) those commands answer with a one-line
hint and exit code 2.
"""

from __future__ import annotations

from typing import Any

import typer

from simprune.allocator import keep_freed_memory

PLUGIN_GROUP = "simprune.cli"
SERVER_PLUGIN = "server"
SERVER_COMMANDS = ("serve", "worker", "keys", "db")
SERVER_EXTRA_HINT = "the server commands need the server extra: pip install 'simprune[server]'"

app = typer.Typer(
    name="simprune",
    help="Structured (filter) pruning for CNNs: prune locally, or run/drive the simprune service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _missing_server_command(name: str, cause: ImportError) -> Any:
    """A stand-in for server command ``name`` that says how to get it (any arguments are accepted)."""

    def command(ctx: typer.Context) -> None:
        typer.echo(f"error: {SERVER_EXTRA_HINT} ({cause})", err=True)
        raise typer.Exit(2)

    command.__name__ = name
    command.__doc__ = "Not installed: needs the server extra (pip install 'simprune[server]')."
    return command


def register_missing_server(cli: typer.Typer, cause: ImportError) -> None:
    """Register ``serve``/``worker``/``keys``/``db`` as stubs that print the install hint and exit 2."""
    settings = {"allow_extra_args": True, "ignore_unknown_options": True}
    for name in SERVER_COMMANDS:
        cli.command(name, context_settings=settings, add_help_option=False)(_missing_server_command(name, cause))


def load_plugins(cli: typer.Typer) -> None:
    """Register the command groups of every ``simprune.cli`` entry point. A plugin that cannot be loaded is
    skipped with a warning, except the server plugin: an ImportError (its extra is not installed) leaves stubs
    that say so, any other error is raised (a bug in app/, not a missing extra)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
        except ImportError as exc:
            if ep.name == SERVER_PLUGIN:
                register_missing_server(cli, exc)
                continue
            _warn(f"the {PLUGIN_GROUP} plugin {ep.name!r} ({ep.value}) could not be loaded: {exc}")
            continue
        except Exception as exc:  # a broken third-party plugin must not take the engine's commands down
            if ep.name == SERVER_PLUGIN:
                raise
            _warn(f"the {PLUGIN_GROUP} plugin {ep.name!r} ({ep.value}) failed: {type(exc).__name__}: {exc}")
            continue
        register(cli)


def _register() -> None:
    from simprune.cli import local, remote

    local.register(app)
    remote.register(app)
    load_plugins(app)


def main() -> None:
    """Console-script entry point."""
    keep_freed_memory()
    _register()
    app()
