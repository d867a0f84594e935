"""The manifest: the one small JSON file whose presence makes a checkpoint exist.

It is written last, in one atomic step, after every shard has written and reported its part. It lists
each file with its size, SHA-256 and row count (so a damaged file is caught before it is parsed), the
shards with their key-group ranges and metadata, and the **state chain**: the state files, oldest first,
whose fold gives the full state. A chain entry is a *base* (a full snapshot of its key-group range) or a
*delta* (instances changed since the parent checkpoint, with tombstones). Restoring any key-group range
folds the entries that overlap it, in order, each filtered to the range, which is what makes restoring onto
a different shard count work even while the chain mixes files of different shard layouts.

A chain entry is dropped once bases written after it cover its whole range (it can no longer matter), and
a compaction replaces every entry up to its source checkpoint by bases of the folded state.

The manifest carries a SHA-256 of its own canonical JSON so that bit rot inside a string is caught too.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .checksum import Checksum
from .errors import CheckpointError

__all__ = ["FORMAT", "VERSION", "FileRef", "Manifest", "ShardEntry", "ShardPart", "covers", "prune_chain"]

FORMAT = "rayfun-checkpoint"
VERSION = 1
MAX_ANCESTORS = 256  # how far back a compaction's source is recognised as this checkpoint's ancestor


@dataclass(frozen=True)
class FileRef:
    """One immutable file of a checkpoint. ``path`` is relative to the store root; None for an empty table
    (nothing is written for it, but an empty *base* still matters: it covers its range)."""

    kind: str  # "state" | "timers" | "messages" | "egress"
    path: str | None
    size: int
    sha256: str
    rows: int
    key_group_range: tuple[int, int]  # [start, end) the rows lie in
    checkpoint_id: int  # the checkpoint it was written for (for a compacted base: its source)
    shard: int  # writer shard index; -1 for compaction output
    base: bool = True  # state only: a full snapshot of its range (else a delta)

    @property
    def stored_path(self) -> str:
        """``path``, where the ref must have a file (as those of ``Manifest.files`` do); an empty table's has
        none, and asking for it is a bug: CheckpointError."""
        if self.path is None:
            raise CheckpointError(
                f"the empty {self.kind} table of checkpoint {self.checkpoint_id} (shard {self.shard}) has no file"
            )
        return self.path

    def to_json(self) -> dict:
        d = asdict(self)
        d["key_group_range"] = list(self.key_group_range)
        return d

    @classmethod
    def from_json(cls, d: dict) -> FileRef:
        return cls(
            d["kind"],
            d["path"],
            int(d["size"]),
            d["sha256"],
            int(d["rows"]),
            (int(d["key_group_range"][0]), int(d["key_group_range"][1])),
            int(d["checkpoint_id"]),
            int(d["shard"]),
            bool(d.get("base", True)),
        )


@dataclass(frozen=True)
class ShardPart:
    """What ``write_shard_part`` returns inside a shard and the coordinator passes to ``commit``.

    ``parent_id`` is the checkpoint the state delta applies on top of (the one the shard restored from or
    last saw committed); None only with ``full`` (a base). Picklable, small: ship it through Ray freely.
    """

    checkpoint_id: int
    shard_index: int
    key_group_range: tuple[int, int]
    key_groups: int
    files: dict[str, FileRef]
    meta: dict
    parent_id: int | None
    full: bool
    layouts: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def bytes_written(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class ShardEntry:
    """A shard of a committed checkpoint: its range, its own files (timers, messages, egress and its state
    file of this checkpoint, if any) and its metadata."""

    index: int
    key_group_range: tuple[int, int]
    files: dict[str, FileRef]
    meta: dict

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "key_group_range": list(self.key_group_range),
            "files": {k: f.to_json() for k, f in self.files.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> ShardEntry:
        return cls(
            int(d["index"]),
            (int(d["key_group_range"][0]), int(d["key_group_range"][1])),
            {k: FileRef.from_json(f) for k, f in d["files"].items()},
            d.get("meta") or {},
        )


@dataclass(frozen=True)
class Manifest:
    """A complete checkpoint."""

    checkpoint_id: int
    created_ms: int
    key_groups: int
    shards: tuple[ShardEntry, ...]
    state_chain: tuple[FileRef, ...]
    layouts: dict[str, list[dict]]  # function type -> its state specs (StateLayout.to_json())
    parent_id: int | None = None
    ancestors: tuple[int, ...] = ()  # parent, grandparent, ... (bounded)
    compacted_through: int | None = None  # newest compaction source spliced into the chain
    app: dict = field(default_factory=dict)

    def files(self) -> list[FileRef]:
        """Every file the checkpoint needs (shard files and the state chain), each once."""
        seen: dict[str, FileRef] = {}
        for ref in [*self.state_chain, *(f for s in self.shards for f in s.files.values())]:
            if ref.path is not None:
                seen.setdefault(ref.path, ref)
        return list(seen.values())

    def shards_overlapping(self, key_group_range: tuple[int, int]) -> list[ShardEntry]:
        start, end = key_group_range
        return [s for s in self.shards if s.key_group_range[0] < end and start < s.key_group_range[1]]

    def to_json_bytes(self, checksum: Checksum | None = None) -> bytes:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint_id": self.checkpoint_id,
            "created_ms": self.created_ms,
            "key_groups": self.key_groups,
            "parent_id": self.parent_id,
            "ancestors": list(self.ancestors),
            "compacted_through": self.compacted_through,
            "shards": [s.to_json() for s in self.shards],
            "state_chain": [f.to_json() for f in self.state_chain],
            "layouts": self.layouts,
            "app": self.app,
        }
        return json.dumps(
            (checksum or Checksum()).document("manifest", body), indent=1, ensure_ascii=False, allow_nan=False
        ).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes, checksum: Checksum | None = None) -> Manifest:
        """Parse and verify; raises ValueError (with the reason) on anything malformed."""
        try:
            doc = json.loads(data.decode("utf-8"))
            body = doc["manifest"]
            if not isinstance(body, dict):
                raise TypeError("the manifest is not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a manifest: {exc}") from None
        try:
            (checksum or Checksum()).check_document(doc, body)
        except ValueError as exc:
            raise ValueError(f"manifest {exc}") from None  # damage (a key error goes up as it is)
        if body.get("format") != FORMAT or body.get("version") != VERSION:
            raise ValueError(f"unknown manifest format {body.get('format')!r} version {body.get('version')!r}")
        try:
            return cls(
                checkpoint_id=int(body["checkpoint_id"]),
                created_ms=int(body["created_ms"]),
                key_groups=int(body["key_groups"]),
                shards=tuple(ShardEntry.from_json(s) for s in body["shards"]),
                state_chain=tuple(FileRef.from_json(f) for f in body["state_chain"]),
                layouts=body.get("layouts") or {},
                parent_id=body.get("parent_id"),
                ancestors=tuple(body.get("ancestors") or ()),
                compacted_through=body.get("compacted_through"),
                app=body.get("app") or {},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"malformed manifest: {exc!r}") from None


def now_ms() -> int:
    return int(time.time() * 1000)


def covers(ranges: list[tuple[int, int]], target: tuple[int, int]) -> bool:
    """Whether the union of ``[start, end)`` ranges contains ``target``."""
    start, end = target
    if start >= end:
        return True
    pos = start
    for lo, hi in sorted(ranges):
        if lo > pos:
            break
        pos = max(pos, hi)
        if pos >= end:
            return True
    return pos >= end


def prune_chain(chain: list[FileRef]) -> list[FileRef]:
    """Drop the entries whose whole range is covered by bases that come after them (they no longer
    contribute to any fold), keeping order."""
    kept: list[FileRef] = []
    later_bases: list[tuple[int, int]] = []
    for ref in reversed(chain):
        if covers(later_bases, ref.key_group_range):
            continue
        kept.append(ref)
        if ref.base:
            later_bases.append(ref.key_group_range)
    kept.reverse()
    return kept


def check_ranges(ranges: list[tuple[int, int]], key_groups: int) -> None:
    """Shard ranges must be disjoint and cover ``[0, key_groups)`` exactly."""
    pos = 0
    for lo, hi in sorted(ranges):
        if lo != pos or hi <= lo:
            raise CheckpointError(
                f"shard key-group ranges {sorted(ranges)} do not tile [0, {key_groups}) (gap or overlap at {pos})"
            )
        pos = hi
    if pos != key_groups:
        raise CheckpointError(f"shard key-group ranges {sorted(ranges)} do not cover [0, {key_groups})")


def json_meta(meta: Any, what: str) -> dict:
    """Validate that shard/app metadata survives JSON (the manifest stores it as JSON; tuples come back as
    lists). Returns the JSON round trip so the writer sees what a restore will see."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{what} must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{what} must be JSON-serializable (str keys; str, int, float, bool, None, lists, dicts): {exc}"
        ) from None
