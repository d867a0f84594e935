"""A rollback superseded by another while it reads: the coordinator retries a recovery that failed (a shard
it called was dead too), so a surviving shard gets a second ``restore`` to the same checkpoint while the
first is still reading the state back. The first has already emptied the live state and reset the
bookkeeping, so the live state then *looked* like the checkpoint's (committed, no change recorded): the
second kept it, or undid nothing, and the shard went on from an empty state. Found by a CI run of
tests/chaos/test_chaos.py (every instance of a shard that was never killed ended behind, the egress exact).
Driven on one ShardCore without Ray: the first read waits until the second rollback has begun."""

from __future__ import annotations

import asyncio

import pytest

from rayfun.checkpoint import CheckpointStore
from rayfun.runtime import shard as shard_module
from rayfun.runtime.shard import ShardCore
from tests.core.test_restore_kept import IDS, Driver, _checkpoint, _counts, _run


@pytest.mark.parametrize("path", ["full", "undo"])
def test_a_rollback_that_supersedes_one_still_reading_restores_the_whole_state(tmp_path, monkeypatch, path):
    # how the first rollback restores: all of the in-memory copy ("full") or by undoing the changes ("undo")
    monkeypatch.setattr(shard_module, "UNDO_MAX_SHARE", 0.0 if path == "full" else 1e9)

    async def scenario(core: ShardCore, store: CheckpointStore):
        driver = Driver(core)
        await driver.send(IDS, 1)
        part = await _checkpoint(core, store, 1)
        await driver.send(IDS, 5)  # after the cut: rolled back
        assert _counts(core)[IDS[0]] == 6
        snapshots = core.snapshots
        second_began = asyncio.Event()
        reads = []

        def held(read):
            async def read_after_the_second_began(*args, **kwargs):
                reads.append(args[0])
                if len(reads) == 1:
                    await second_began.wait()
                return await read(*args, **kwargs)

            return read_after_the_second_began

        monkeypatch.setattr(snapshots, "read", held(snapshots.read))
        monkeypatch.setattr(snapshots, "read_instances", held(snapshots.read_instances))
        first = asyncio.create_task(core.restore(1, [None], [], 1, part.meta["driver_seq"]))
        while not reads:  # the first rollback is reading
            await asyncio.sleep(0.001)
        second = asyncio.create_task(core.restore(2, [None], [], 1, part.meta["driver_seq"]))
        await asyncio.sleep(0.01)  # the second has begun (its synchronous part decided how to restore)
        second_began.set()
        await asyncio.gather(first, second)
        assert _counts(core) == {id: 1 for id in IDS}, "the shard went on from another state than checkpoint 1's"
        driver.seq = part.meta["driver_seq"]  # the driver's channel resumes where the checkpoint read it
        await driver.send(IDS[:3], 2)  # and it works on from there
        assert [_counts(core)[id] for id in IDS[:4]] == [3, 3, 3, 1]

    _run(scenario, 0, 1, tmp_path)
