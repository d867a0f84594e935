"""Retention: which checkpoints and files stay.

Keep the newest ``retain`` manifests and every file any of them references (their state chains may reach
far back); a data file is deleted only if no retained manifest references it and it belongs to a
checkpoint older than the newest committed one (so the parts of an in-flight checkpoint are never
touched). Compaction output is kept while its marker or record may still be spliced into the next commit
(see compaction.py). Quarantined manifests (``damaged/``) are not counted and are never deleted.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import TYPE_CHECKING

from .compaction import COMPACTION_RE
from .errors import CheckpointError, CorruptCheckpointError

if TYPE_CHECKING:
    from .store import CheckpointStore

log = logging.getLogger("rayfun.checkpoint")

__all__ = ["apply_retention"]

_DATA_RE = re.compile(r"data/cp-(\d+)/")
_DIR_RE = re.compile(r"cp-(\d+)")


def apply_retention(store: CheckpointStore) -> list[str]:
    """Delete older manifests, then unreferenced part files of checkpoints older than the newest, then
    stale compactions. Returns the deleted paths (relative). Conservative: if a retained manifest cannot be
    *read* (I/O, not corruption), no data file is deleted this time."""
    blobs = store.blobs
    ids = store.checkpoint_ids()
    if not ids:
        return []
    keep, drop = ids[-store.retain :], ids[: -store.retain]
    deleted = [store.manifest_path(i) for i in drop]
    blobs.delete(deleted)  # manifests first: from here on those checkpoints do not exist
    store.forget(drop)
    newest = keep[-1]
    referenced: set[str] = set()
    lineage: set[int] = set()
    compacted_through = None
    for i in keep:
        try:
            m = store.manifest(i)
        except CorruptCheckpointError:
            continue  # unusable checkpoint: its files are garbage unless another references them
        except (CheckpointError, OSError) as exc:
            log.warning("retention: cannot read manifest %d (%s); keeping all data files for now", i, exc)
            return deleted
        referenced.update(f.path for f in m.files() if f.path is not None)
        if i == newest:
            lineage = {i, *m.ancestors}
            compacted_through = m.compacted_through
    # Listing order matters: compaction output is listed before the markers, and a compaction writes its
    # marker before its files, so every file seen below has its marker (or record) in the second listing.
    compacted_files = blobs.find("compacted")
    protected_dirs: set[str] = set()
    stale_records: list[str] = []
    for p in blobs.ls("compactions"):
        found = COMPACTION_RE.search(p)
        if not found:
            continue
        source = int(found.group(1))
        if source in lineage and (compacted_through is None or source > compacted_through):
            protected_dirs.add(f"compacted/cp-{found.group(1)}-{found.group(2)}/")
        else:
            stale_records.append(blobs.rel(p))
    garbage = []
    for rel in blobs.find("data"):
        found = _DATA_RE.match(rel)
        if found and int(found.group(1)) < newest and rel not in referenced:
            garbage.append(rel)
    for rel in compacted_files:
        if rel not in referenced and not any(rel.startswith(d) for d in protected_dirs):
            garbage.append(rel)
    blobs.delete(garbage + stale_records)

    # empty directories of old checkpoints and dead compactions (never one an in-flight writer may fill)
    def in_use(top: str, name: str) -> bool:
        found = _DIR_RE.match(name)
        return not found or (top == "data" and int(found.group(1)) >= newest) or f"{top}/{name}/" in protected_dirs

    for top in ("data", "compacted"):
        blobs.remove_empty_dirs(top, partial(in_use, top))
    return deleted + garbage + stale_records
