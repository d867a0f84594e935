"""``rayfun state`` / ``checkpoints``: what a checkpoint directory holds (reads storage; needs no Ray)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
