"""The ``rayfun`` command: run an application, operate a running one, look into its checkpoints.

``rayfun run`` / ``status`` / ``stop`` / ``rescale`` (``operate.py``) talk to applications on a Ray cluster;
``rayfun state`` / ``checkpoints`` (``inspect.py``) read checkpoint storage directly and need no Ray.
Errors are one clear line; ``--verbose`` shows the detail.
"""

from __future__ import annotations

import click

from .errors import run_cli

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and the rayfun log.")
@click.version_option(package_name="rayfun")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Stateful Functions on Ray."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def _register() -> None:
    from . import inspect, operate

    for module in (operate, inspect):
        for command in module.COMMANDS:
            cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point: the exit code (0 ok, 1 a failure said in one line, 2 bad usage)."""
    _register()
    return run_cli(cli, argv)
