"""A standby shard restores a checkpoint once, on a few synthetic rows, before it is ever needed.

The first restore in a fresh process paid for lazy imports, Arrow's first kernel calls, the reader's thread
pool and the allocator's first growth: reading a part of 500k instances took 0.45-0.49 s the first time and
0.23-0.29 s after a restore of a few rows had run (same files, same process; ``bench/recovery.py``). A
standby is exactly that fresh process, and its restore is the critical path of a recovery: it pays the
first time here, while nothing waits for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time

from ..functions import ValueSpec
from ..keygroups import key_groups_of
from ..types import IntType, StringType
from .state_codec import StateDelta, StateLayout
from .store import CheckpointStore

log = logging.getLogger("rayfun")

__all__ = ["warm_up_restore"]

_KEY_GROUPS = 128
_TYPES = {
    "rayfun/warm-up-single": [ValueSpec("value", IntType)],
    "rayfun/warm-up-cells": [ValueSpec("count", IntType), ValueSpec("name", StringType)],
}


def warm_up_restore(instances: int = 256) -> int:
    """Write a two-checkpoint chain (a base and a delta, two shards) of ``instances`` instances of two
    function types to a temporary directory, restore the first shard's part of it, decode it, and remove
    it; returns the instances decoded (0 if it failed). Never raises: a warm-up that fails only leaves the
    first restore as slow as before."""
    began = time.perf_counter()
    decoded = 0
    directory = tempfile.mkdtemp(prefix="rayfun-warm-up-")
    try:
        store = CheckpointStore(directory, retain=2)
        layouts = {t: StateLayout.of(t, specs) for t, specs in _TYPES.items()}
        ids = [f"warm-{i}" for i in range(instances)]
        half = _KEY_GROUPS // 2
        ranges = [(0, half), (half, _KEY_GROUPS)]
        # each shard's part holds the instances of its key groups, as a real shard's does
        owner = {t: [int(g >= half) for g in key_groups_of(t, ids, _KEY_GROUPS).to_pylist()] for t in _TYPES}
        message = ("rayfun/warm-up-single", ids[0], None, IntType.typename, IntType.serialize(1))
        for checkpoint_id, changed in ((1, range(instances)), (2, range(0, instances, 3))):
            parts = []
            for shard, key_range in enumerate(ranges):
                deltas = [  # a single-cell type as the runtime records it (values), the other as cells
                    StateDelta(
                        layout,
                        {ids[i]: (i if layout.width == 1 else [i, ids[i]]) for i in changed if owner[t][i] == shard},
                        values=layout.width == 1,
                    )
                    for t, layout in layouts.items()
                ]
                parts.append(
                    store.write_shard_part(
                        checkpoint_id,
                        shard,
                        key_range,
                        key_groups=_KEY_GROUPS,
                        state=deltas,
                        parent_id=None if checkpoint_id == 1 else 1,
                        messages=[message],
                    )
                )
            store.commit(checkpoint_id, parts, key_groups=_KEY_GROUPS)
        restored = store.load_shard(2, ranges[0])
        decoded = sum(len(restored.instances(typename, specs)) for typename, specs in _TYPES.items())
        restored.close()
    except Exception:  # a warm-up only: the real restore reports its own errors
        log.warning("the restore warm-up of this standby shard failed", exc_info=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    log.debug("restore warm-up: %d instances in %.3f s", decoded, time.perf_counter() - began)
    return decoded
