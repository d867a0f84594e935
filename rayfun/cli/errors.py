"""How the CLI fails: one line naming the cause (``rayfun: error: ...``), the traceback only with ``--verbose``."""

from __future__ import annotations

import sys
import traceback

import click

__all__ = ["CliError", "run_cli"]


class CliError(click.ClickException):
    """A failure the user can act on, said in one line (exit code 1)."""

    def format_message(self) -> str:
        return self.message


def run_cli(group: click.Group, argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        group.main(args=args, prog_name="rayfun", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("rayfun: aborted", err=True)
        return 1
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        click.echo(f"rayfun: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # anything else: still one line, the detail with --verbose
        if verbose:
            traceback.print_exc()
        text = str(exc).strip().splitlines()
        click.echo(f"rayfun: error: {type(exc).__name__}: {text[0] if text else ''}", err=True)
        return 1
    return 0
