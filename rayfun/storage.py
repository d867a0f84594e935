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

import logging
from typing import Any

from .constants import STORAGE_CALL_TIMEOUT_S, STORAGE_MIN_BYTES_PER_S
from .errors import RayfunError

__all__ = ["StorageTimeout", "call_bounded"]

log = logging.getLogger("rayfun")

_UNBOUNDED: set[tuple[type, str]] = set()  # (filesystem class, method) found to take no timeout


class StorageTimeout(RayfunError, TimeoutError):
    """A storage call did not finish in time (storage that hangs); it was cancelled."""


def call_bounded(fs: Any, method: str, *args: Any, size: int = 0, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)``, given up on (StorageTimeout) after STORAGE_CALL_TIMEOUT_S plus
    ``size`` bytes' worth of STORAGE_MIN_BYTES_PER_S, where ``fs`` is an async filesystem."""
    from fsspec.asyn import AsyncFileSystem
    from fsspec.exceptions import FSTimeoutError

    call = getattr(fs, method)
    if not isinstance(fs, AsyncFileSystem) or (type(fs), method) in _UNBOUNDED:
        return call(*args, **kwargs)
    timeout = STORAGE_CALL_TIMEOUT_S + size / STORAGE_MIN_BYTES_PER_S
    try:
        return call(*args, timeout=timeout, **kwargs)
    except TypeError as exc:  # a method the filesystem wrote itself, not through fsspec's sync wrapper
        if "timeout" not in str(exc):
            raise
        log.warning("%s.%s takes no timeout: its calls are not bounded in time", type(fs).__name__, method)
        _UNBOUNDED.add((type(fs), method))
        return call(*args, **kwargs)
    except FSTimeoutError as exc:
        where = f" {args[0]}" if args and isinstance(args[0], str) else ""
        raise StorageTimeout(f"storage did not answer within {timeout:.0f} s ({method}{where})") from exc
