"""Restoring big state a row group at a time must give exactly what a whole-table restore gives.

A randomized chain (a base and deltas over two function types, with tombstones, re-created instances and
partly set cells) is written with tiny pieces and row groups, then restored for key-group ranges that cut
through the files, once whole in memory and once from files a row group at a time, and both are compared
with a plain-Python fold of the same history. Damage to a big file is found before any row is used."""

from __future__ import annotations

import os
import random
import tempfile

import pytest

from rayfun.checkpoint import CheckpointStore, CorruptCheckpointError, StateDelta, fileformat, state_codec
from rayfun.checkpoint import datafiles as store_module
from rayfun.runtime.partitioning import key_group
from tests.support.checkpoints import LAYOUTS, random_cells

pytestmark = pytest.mark.timeout(120)

KEY_GROUPS = 16
SEED = int(os.environ.get("RAYFUN_TEST_SEED", "20261202"))


def _history(rng: random.Random, checkpoints: int) -> list[dict[str, dict[str, list | None]]]:
    """Per checkpoint, per function type: the instances changed (cells) or removed (None)."""
    live: dict[str, set[str]] = {ft: set() for ft in LAYOUTS}
    history = []
    for n in range(checkpoints):
        step: dict[str, dict[str, list | None]] = {}
        for ft, layout in LAYOUTS.items():
            changes: dict[str, list | None] = {}
            for _ in range(rng.randint(20, 120) if n == 0 else rng.randint(0, 60)):
                id = f"i{rng.randint(0, 150)}"
                if id in live[ft] and rng.random() < 0.25:
                    changes[id] = None
                    live[ft].discard(id)
                else:
                    changes[id] = random_cells(layout, rng)
                    live[ft].add(id)
            step[ft] = changes
        history.append(step)
    return history


def _expected(history, key_group_range) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {ft: {} for ft in LAYOUTS}
    for step in history:
        for ft, changes in step.items():
            for id, cells in changes.items():
                if cells is None:
                    out[ft].pop(id, None)
                else:
                    out[ft][id] = cells
    start, end = key_group_range
    return {
        ft: {i: c for i, c in inst.items() if start <= key_group(ft, i, KEY_GROUPS) < end} for ft, inst in out.items()
    }


def _write(store: CheckpointStore, history) -> None:
    for n, step in enumerate(history, start=1):
        deltas = [
            StateDelta(
                LAYOUTS[ft],
                {i: c for i, c in changes.items() if c is not None},
                deleted=[i for i, c in changes.items() if c is None],
            )
            for ft, changes in step.items()
        ]
        part = store.write_shard_part(
            n, 0, (0, KEY_GROUPS), key_groups=KEY_GROUPS, state=deltas, parent_id=None if n == 1 else n - 1
        )
        store.commit(n, [part], key_groups=KEY_GROUPS)


def _restored(store: CheckpointStore, n: int, key_group_range) -> dict[str, dict[str, list]]:
    restored = store.load_shard(n, key_group_range)
    try:
        return {ft: restored.instances(ft) for ft in LAYOUTS}
    finally:
        restored.close()


@pytest.mark.parametrize("trial", range(3))
def test_streamed_restore_equals_a_plain_fold(store_url, monkeypatch, tmp_path, trial):
    seed = SEED + trial
    print(f"seed {seed} (RAYFUN_TEST_SEED={SEED} to repeat)")
    rng = random.Random(seed)
    history = _history(rng, checkpoints=rng.randint(2, 6))
    monkeypatch.setattr(state_codec, "PIECE_BYTES", rng.choice([256, 2048, 10**9]))
    monkeypatch.setattr(fileformat, "ROW_GROUP_BYTES", rng.choice([512, 4096]))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    store = CheckpointStore(store_url)
    _write(store, history)
    last = len(history)
    ranges = [(0, KEY_GROUPS), (0, 5), (5, 6), (6, KEY_GROUPS)]
    whole = {r: _restored(store, last, r) for r in ranges}  # files small enough: read whole
    monkeypatch.setattr(store_module, "STAGE_ABOVE_BYTES", 0)  # every file "big": read a row group at a time
    streamed = {r: _restored(store, last, r) for r in ranges}
    for r in ranges:
        expected = _expected(history, r)
        assert whole[r] == expected, f"whole-table restore of {r} differs (seed {seed})"
        assert streamed[r] == expected, f"streamed restore of {r} differs (seed {seed})"
    assert not list(downloads.iterdir()), "a downloaded copy was left behind"


def test_damage_to_a_big_file_is_found_before_its_rows_are_used(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "STAGE_ABOVE_BYTES", 0)
    rng = random.Random(SEED)
    store = CheckpointStore(str(tmp_path / "cp"))
    history = _history(rng, checkpoints=2)
    _write(store, history)
    state_file = store.manifest(2).state_chain[-1].path
    path = store.blobs.abs(state_file)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
        store.load_shard(2)
    with open(path, "wb") as f:
        f.write(bytes(data[:-10]))
    with pytest.raises(CorruptCheckpointError, match="size mismatch"):
        store.load_shard(2)
    fallback = store.load_latest_valid()
    assert fallback is not None and fallback.checkpoint_id == 1
    assert {ft: fallback.instances(ft) for ft in LAYOUTS} == _expected(history[:1], (0, KEY_GROUPS))
