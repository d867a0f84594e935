"""Compaction: fold a checkpoint's state chain (base + deltas) into one base per shard range.

It runs beside the job (a thread of the coordinator, or any process with the URL): it only *reads*
committed files and *writes* new immutable ones, and never edits a manifest. The protocol with ``commit``
and retention:

1. write the marker ``compactions/cp-<k>-<token>.pending`` (retention spares the output of a live marker);
2. read every file of checkpoint k's chain once, fold it per shard range of k, write the bases under
   ``compacted/cp-<k>-<token>/``;
3. write the record ``compactions/cp-<k>-<token>.json`` (files, sizes, checksums), then drop the marker.

The next ``commit`` whose lineage contains k replaces every chain entry of checkpoint <= k by these bases
(the fold of those entries *is* the state at k) and records ``compacted_through = k``. The old files go
when no retained manifest references them any more.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CheckpointError, CorruptCheckpointError
from .manifest import FileRef, Manifest, now_ms

if TYPE_CHECKING:
    from .store import CheckpointStore

log = logging.getLogger("rayfun.checkpoint")

__all__ = ["COMPACTION_RE", "CompactionResult", "compact", "needs_compaction", "usable_compaction"]

COMPACTION_RE = re.compile(r"cp-(\d+)-([0-9a-f]+)\.(json|pending)$")


@dataclass(frozen=True)
class CompactionResult:
    """Bases of the folded state of checkpoint ``source``; a later ``commit`` splices them into its chain."""

    source: int
    files: tuple[FileRef, ...]
    record_path: str

    @property
    def bytes_written(self) -> int:
        return sum(f.size for f in self.files)


def needs_compaction(manifest: Manifest, max_chain: int | None = None) -> bool:
    """Whether the chain holds deltas (or, with ``max_chain``, more than that many entries)."""
    if max_chain is not None:
        return len(manifest.state_chain) > max_chain
    return any(not f.base for f in manifest.state_chain) or len(manifest.state_chain) > len(manifest.shards)


def compact(store: CheckpointStore, checkpoint: Manifest | int | None = None) -> CompactionResult | None:
    """Fold the chain of ``checkpoint`` (default: newest complete) into bases; None if already compact.
    Each range's fold is read and written a row group at a time (restore.py), like a restore."""
    if checkpoint is None:
        m = store.latest()
        if m is None:
            return None
    else:
        m = store.as_manifest(checkpoint)
    if not needs_compaction(m):
        return None
    k = m.checkpoint_id
    name = f"cp-{k:010d}-{uuid.uuid4().hex[:8]}"
    marker = f"compactions/{name}.pending"
    store.blobs.put(marker, b"")
    try:
        refs = []
        for shard in sorted(m.shards, key=lambda s: s.key_group_range):
            rng = shard.key_group_range
            restored = store.load_shard(m, rng, tables=("state",))  # every file verified
            try:
                stem = f"compacted/{name}/range-{rng[0]:06d}-{rng[1]:06d}.state"
                ref, data = store.files.encode(
                    "state", restored.state.batches(), stem, rng, k, -1, base=True, parquet=True
                )
            finally:
                restored.close()
            if data is not None:
                store.files.put(ref.stored_path, data)
            refs.append(ref)
        body = {"source": k, "created_ms": now_ms(), "files": [r.to_json() for r in refs]}
        record = f"compactions/{name}.json"
        store.blobs.put_atomic(record, json.dumps(store.checksum.document("compaction", body), indent=1).encode())
    except BaseException:
        log.exception("compaction of checkpoint %d failed", k)
        raise
    finally:
        try:
            store.blobs.delete([marker])
        except OSError as exc:  # a stale marker only delays cleanup of this compaction's files
            log.warning("compaction of checkpoint %d: cannot remove %s: %s", k, marker, exc)
    result = CompactionResult(k, tuple(refs), record)
    log.info(
        "compacted checkpoint %d: %d chain files -> %d bases (%d bytes)",
        k,
        len(m.state_chain),
        len(refs),
        result.bytes_written,
    )
    return result


def usable_compaction(
    store: CheckpointStore, ancestors: Sequence[int], compacted_through: int | None
) -> CompactionResult | None:
    """The newest finished compaction of an ancestor not yet spliced in, whose files all exist (what the
    next ``commit`` splices into its chain)."""
    lineage = set(ancestors)
    candidates = []
    for p in store.blobs.ls("compactions"):
        found = COMPACTION_RE.search(p)
        if found and found.group(3) == "json":
            source = int(found.group(1))
            if source in lineage and (compacted_through is None or source > compacted_through):
                candidates.append((source, store.blobs.rel(p)))
    for _source, rel in sorted(candidates, reverse=True):
        try:
            result = _read_record(store, rel)
            _check_exist(store, result.files)
            return result
        except (CheckpointError, OSError, ValueError) as exc:
            log.warning("compaction %s not used: %s", rel, exc)
    return None


def _read_record(store: CheckpointStore, rel: str) -> CompactionResult:
    doc = json.loads(store.blobs.get(rel).decode("utf-8"))
    body = doc["compaction"]
    try:
        store.checksum.check_document(doc, body)
    except (ValueError, CheckpointError) as exc:  # a compaction is only an optimisation: never used then
        raise CorruptCheckpointError(store.blobs.abs(rel), "checksum mismatch", str(exc)) from None
    return CompactionResult(int(body["source"]), tuple(FileRef.from_json(f) for f in body["files"]), rel)


def _check_exist(store: CheckpointStore, refs: Iterable[FileRef]) -> None:
    for ref in refs:
        if ref.path is None:
            continue
        try:
            size = store.blobs.size(ref.path)
        except FileNotFoundError:
            raise CorruptCheckpointError(store.blobs.abs(ref.path), "missing") from None
        if size != ref.size:
            raise CorruptCheckpointError(
                store.blobs.abs(ref.path), "size mismatch", f"{size} bytes, record says {ref.size}"
            )
