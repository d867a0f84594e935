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
import uuid

from .manifest import Manifest, now_ms
from .state_codec import filter_key_groups, fold_layers
from .store import CheckpointStore, CompactionResult

log = logging.getLogger("rayfun.checkpoint")

__all__ = ["compact", "needs_compaction"]


def needs_compaction(manifest: Manifest, max_chain: int | None = None) -> bool:
    """Whether the chain holds deltas (or, with ``max_chain``, more than that many entries)."""
    if max_chain is not None:
        return len(manifest.state_chain) > max_chain
    return any(not f.base for f in manifest.state_chain) or len(manifest.state_chain) > len(manifest.shards)


def compact(store: CheckpointStore, checkpoint: Manifest | int | None = None) -> CompactionResult | None:
    """Fold the chain of ``checkpoint`` (default: newest complete) into bases; None if already compact."""
    if checkpoint is None:
        m = store.latest()
        if m is None:
            return None
    else:
        m = store._as_manifest(checkpoint)
    if not needs_compaction(m):
        return None
    k = m.checkpoint_id
    name = f"cp-{k:010d}-{uuid.uuid4().hex[:8]}"
    marker = f"compactions/{name}.pending"
    store._put(marker, b"")
    try:
        read = store._read_tables(m.state_chain, k)  # every chain file once, verified
        refs = []
        for shard in sorted(m.shards, key=lambda s: s.key_group_range):
            rng = shard.key_group_range
            layers = [
                filter_key_groups(read[f.path], rng, m.key_groups, f.key_group_range)
                for f in m.state_chain
                if f.path is not None and f.key_group_range[0] < rng[1] and rng[0] < f.key_group_range[1]
            ]
            state = fold_layers(layers)
            rel = f"compacted/{name}/range-{rng[0]:06d}-{rng[1]:06d}.state.parquet"
            ref, data = store._encode_file("state", state, rel, rng, k, -1, base=True)
            if data is not None:
                store._put_file(rel, data)
            refs.append(ref)
        body = {"source": k, "created_ms": now_ms(), "files": [r.to_json() for r in refs]}
        record = f"compactions/{name}.json"
        store._put_atomic(record, json.dumps(store.checksum.document("compaction", body), indent=1).encode())
    except BaseException:
        log.exception("compaction of checkpoint %d failed", k)
        raise
    finally:
        try:
            store._delete([marker])
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
