"""The standby's restore warm-up runs the real write-commit-restore-decode path and leaves nothing behind."""

from __future__ import annotations

import os
import tempfile

from rayfun.checkpoint import warmup
from rayfun.checkpoint.warmup import warm_up_restore
from rayfun.keygroups import key_groups_of


def leftovers() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("rayfun-warm-up-")}


def test_warm_up_restores_its_range_of_both_types_and_removes_its_directory():
    before = leftovers()
    ids = [f"warm-{i}" for i in range(100)]
    half = warmup._KEY_GROUPS // 2
    expected = sum(
        sum(1 for g in key_groups_of(typename, ids, warmup._KEY_GROUPS).to_pylist() if g < half)
        for typename in warmup._TYPES
    )
    assert 0 < expected < 200  # the first shard's range holds some of the instances, not all
    assert warm_up_restore(100) == expected
    assert leftovers() == before


def test_a_failing_warm_up_says_so_and_does_not_raise(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(warmup.CheckpointStore, "write_shard_part", broken)
    before = leftovers()
    assert warm_up_restore(10) == 0
    assert "restore warm-up" in caplog.text
    assert leftovers() == before
