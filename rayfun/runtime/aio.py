"""Small asyncio helpers the runtime's actors share."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_quietly", "retrieve"]


def retrieve(future: asyncio.Future) -> None:
    """Mark a future's outcome as seen (use as a done callback) where nobody may await it: a refused
    snapshot, a gather that is cancelled (it is left holding a CancelledError). asyncio would otherwise log
    "exception was never retrieved" for each."""
    if not future.cancelled():
        future.exception()


def cancel_quietly(future: asyncio.Future) -> None:
    """Cancel a future nobody will await any more, without the "never retrieved" report."""
    future.add_done_callback(retrieve)
    future.cancel()
