"""The base of rayfun's own errors, so that a caller can tell them from everything else with one
``except rayfun.RayfunError``. Each part keeps its errors next to its code (``CheckpointError`` in
``rayfun.checkpoint``, ``RemoteFunctionError`` in ``rayfun.remote``, ...); they all derive from this one."""

from __future__ import annotations

__all__ = ["RayfunError"]


class RayfunError(Exception):
    """Raised by rayfun itself (not by a user's function): bad configuration, bad input, a checkpoint
    that cannot be read or written, a remote function that failed for good."""
