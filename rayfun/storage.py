"""Storage calls that cannot hang: every call rayfun makes to an object store through fsspec is bounded.

s3fs's client gives up on a connection that stays silent (its read timeout, 15 s), but not every wait has a
timer: botocore asks for ``Expect: 100-continue`` on a PUT, and aiohttp waits for that answer without one.
A PUT sent as the network went silent (a partition, a dead NAT entry: no reset, no answer) then waits
forever, and with it a checkpoint, the exactly-once egress waiting for that checkpoint, or a file sink.
fsspec's async filesystems (s3fs, gcsfs, adlfs) take a ``timeout`` for a whole call, its retries included,
and cancel the call then (nothing lands late): rayfun passes STORAGE_CALL_TIMEOUT_S, plus time for the
bytes at STORAGE_MIN_BYTES_PER_S. Local disks and filesystems that are not async are called as they are.
"""

from __future__ import annotations

from typing import Any

from .constants import STORAGE_CALL_TIMEOUT_S, STORAGE_MIN_BYTES_PER_S

__all__ = ["StorageTimeout", "call_bounded"]


class StorageTimeout(TimeoutError):
    """A storage call did not finish in time (storage that hangs); it was cancelled."""


def call_bounded(fs: Any, method: str, *args: Any, size: int = 0, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)``, given up on (StorageTimeout) after STORAGE_CALL_TIMEOUT_S plus
    ``size`` bytes' worth of STORAGE_MIN_BYTES_PER_S, where ``fs`` is an async filesystem."""
    from fsspec.asyn import AsyncFileSystem
    from fsspec.exceptions import FSTimeoutError

    if not isinstance(fs, AsyncFileSystem):
        return getattr(fs, method)(*args, **kwargs)
    timeout = STORAGE_CALL_TIMEOUT_S + size / STORAGE_MIN_BYTES_PER_S
    try:
        return getattr(fs, method)(*args, timeout=timeout, **kwargs)
    except FSTimeoutError as exc:
        where = f" {args[0]}" if args and isinstance(args[0], str) else ""
        raise StorageTimeout(f"storage did not answer within {timeout:.0f} s ({method}{where})") from exc
