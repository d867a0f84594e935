"""``rayfun run`` / ``status`` / ``stop`` / ``rescale``: applications on a Ray cluster."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
