"""How an application checkpoints, as one value: ``rayfun.start(functions, checkpoint=CheckpointConfig(...))``.

The loose ``checkpoint_dir=``, ``checkpoint_interval=``, ... keywords of ``start`` still work as a
convenience; they build one of these."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["CheckpointConfig"]


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often an application checkpoints.

    ``dir``: any fsspec URL (a local path, ``s3://bucket/prefix``, ``memory://...``); None turns
    checkpoints off (at-least-once egress, no recovery of state). ``interval``: seconds between
    checkpoints (None: only on ``app.checkpoint()``). ``retain``: how many complete checkpoints are kept.
    ``storage_options`` go to fsspec (e.g. S3 credentials and endpoint). ``compression``: the files' codec
    (LZ4 costs the shards the least CPU; ``"zstd"`` writes about half the bytes for three times the CPU;
    snappy, gzip or brotli, which Arrow IPC lacks, make every file Parquet).
    ``key``: at least 16 bytes (default ``$RAYFUN_CHECKPOINT_KEY``) turns the files' SHA-256 digests into
    HMACs that only holders of the key can forge; anything in the bucket the key did not sign is refused.
    """

    dir: str | None = None
    interval: float | None = 1.0
    retain: int = 3
    storage_options: dict[str, Any] = field(default_factory=dict)
    compression: str = "lz4"
    key: str | bytes | None = None

    def __post_init__(self) -> None:
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"checkpoint interval must be > 0 seconds (or None), got {self.interval}")
        if self.retain < 1:
            raise ValueError(f"retain must be >= 1, got {self.retain}")

    def resolved(self) -> CheckpointConfig:
        """This config as the shards get it: a local ``dir`` made absolute (shards may run in another
        working directory) and the key taken from the environment when none is given (so every shard
        uses the driver's key)."""
        from .checkpoint.checksum import KEY_ENV, Checksum

        directory = self.dir
        if directory is not None and "://" not in str(directory):
            directory = os.path.abspath(directory)
        key = self.key if self.key is not None else (os.environ.get(KEY_ENV) or None)
        Checksum(key)  # a key too short is refused here, not in an actor
        return replace(self, dir=directory, key=key)

    def store_options(self) -> dict[str, Any]:
        """The keyword arguments of ``CheckpointStore`` (besides the URL)."""
        return {
            "retain": self.retain,
            "storage_options": dict(self.storage_options) or None,
            "compression": self.compression,
            "key": self.key,
        }
