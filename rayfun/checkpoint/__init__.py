"""Checkpoints: Arrow/Parquet files plus a manifest written last, on any fsspec URL.

The runtime uses ``CheckpointStore`` (write a shard's part, commit the manifest, find and load the newest
intact checkpoint, compact, expire); users read state offline with ``read_state``. Modules:

- ``schema``       the Arrow schemas of the files (what pyarrow / pandas / DuckDB users see);
- ``state_codec``  in-memory ``id -> cells`` <-> state rows (vectorized), key groups, folding deltas;
- ``records``      timers, messages, egress records <-> rows;
- ``manifest``     the manifest and the state chain (base + deltas) rules;
- ``fileformat``   Arrow IPC and Parquet bytes <-> tables (the one reader of files: it must never run code);
- ``checksum``     SHA-256, or HMAC-SHA256 with a user's key, of files and manifests;
- ``store``        files, commit, listing, verification, quarantine, restore, retention;
- ``compaction``   folding a chain into bases in the background;
- ``reader``       ``read_state``.
"""

from .compaction import needs_compaction
from .errors import CheckpointError, CheckpointKeyError, CorruptCheckpointError
from .manifest import FileRef, Manifest, ShardEntry, ShardPart
from .reader import read_state
from .state_codec import StateDelta, StateLayout, decode_instances, encode_state
from .store import CheckpointStore, CompactionResult, RestoredShard

__all__ = [
    "CheckpointError",
    "CheckpointKeyError",
    "CheckpointStore",
    "CompactionResult",
    "CorruptCheckpointError",
    "FileRef",
    "Manifest",
    "RestoredShard",
    "ShardEntry",
    "ShardPart",
    "StateDelta",
    "StateLayout",
    "decode_instances",
    "encode_state",
    "needs_compaction",
    "read_state",
]
