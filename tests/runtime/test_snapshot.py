"""Snapshots: the cut, aborting and resetting, and a written snapshot read back from memory and storage."""

import asyncio

import pytest

from rayfun import IntType, ValueSpec
from rayfun.checkpoint.state_codec import StateLayout
from rayfun.runtime.runners.state import FunctionState
from rayfun.runtime.snapshot import CheckpointRefused, Snapshots
from tests.support.fakes import FakeServices


class _Runner:
    """What a snapshot reads of a runner: its state and the changes taken by uncommitted snapshots."""

    def __init__(self) -> None:
        self.typename = "t/count"
        self.state = FunctionState(self.typename, [ValueSpec("n", IntType)])
        self.uncommitted: list[dict] = []


def _snapshots(max_bytes: int = 2**20) -> Snapshots:
    counters = {"snapshot_write_s": 0.0, "snapshot_write_cpu_s": 0.0}
    return Snapshots(FakeServices(), 0, (0, 64), 64, max_bytes, counters)


def _layouts(runners) -> dict:
    return {t: StateLayout.of(t, r.state.specs) for t, r in runners.items()}


def test_an_aborted_cut_keeps_its_changes_for_the_next_and_refuses_its_late_markers():
    async def main():
        snaps = _snapshots()
        runners = {"t/count": _Runner()}
        state = runners["t/count"].state
        state.put("a", [1])
        assert snaps.requested(1, full=False) is None  # not begun: the caller cuts
        done = snaps.begin(1)
        snap = snaps.cut(1, runners, _layouts(runners))
        assert snap.full and snap.rows == 1 and snap.parent_id is None  # the first is a base
        snap.waiting = {1, 2}
        assert not snaps.started(snap) and snaps.epoch == 1 and not snaps.needs_begin(1)
        assert not snaps.marker(1, 1) and snaps.marker(2, 1)  # the last awaited marker
        snaps.aborted(1)
        assert snaps.current is None and done.cancelled()
        with pytest.raises(CheckpointRefused):
            snaps.requested(1, full=False)
        assert not snaps.needs_begin(1)  # a late marker of the aborted checkpoint starts nothing
        state.put("b", [2])
        snaps.begin(2)
        snap = snaps.cut(2, runners, _layouts(runners))
        assert snap.captured["t/count"][0] == {"a": 1, "b": 2}  # what the aborted one took, and what came since
        assert runners["t/count"].uncommitted == [{"a": 1, "b": 2}]
        snaps.reset(7)  # a rollback
        assert snaps.current is None and snaps.done == {} and snaps.committed == 7 and snaps.epoch == 7
        assert snaps.needs_begin(3)  # ids after the last begun still start snapshots

    asyncio.run(main())


def test_a_full_snapshot_is_taken_when_asked_and_deltas_build_on_the_committed_one(tmp_path):
    from rayfun.checkpoint import CheckpointStore

    async def main():
        snaps = _snapshots()
        snaps.open_store(str(tmp_path), {})
        store = CheckpointStore(str(tmp_path))
        runners = {"t/count": _Runner()}
        state = runners["t/count"].state
        state.put("a", [5])
        state.put("b", [6])
        for n, full in ((1, False), (2, False), (3, True)):
            if n == 2:
                state.put("a", [7])
            assert snaps.requested(n, full) is None
            done = snaps.begin(n)
            snap = snaps.cut(n, runners, _layouts(runners))
            assert snap.full == (n != 2) and snap.parent_id == (n - 1 if n > 1 else None)
            snap.meta = {"sources": [], "driver_seq": 0}
            assert snaps.started(snap)
            snaps.finish()
            await asyncio.gather(*snaps.services.tasks)
            part = done.result()
            store.commit(n, [part], key_groups=64)
            snaps.complete(n, runners)
            assert snaps.committed == n and runners["t/count"].uncommitted == []
        assert snaps.in_memory(3) and not snaps.in_memory(2)
        from_memory = await snaps.read(3, _layouts(runners))
        from_storage = await snaps.read(3, None)
        expected = {"a": [7], "b": [6]}
        assert from_memory.instances("t/count", state.specs) == expected
        assert from_storage.instances("t/count", state.specs) == expected

    asyncio.run(main())


def test_a_copy_past_the_memory_bound_is_not_kept(tmp_path):
    async def main():
        snaps = _snapshots(max_bytes=0)
        snaps.open_store(str(tmp_path), {})
        runners = {"t/count": _Runner()}
        runners["t/count"].state.put("a", [1])
        done = snaps.begin(1)
        snap = snaps.cut(1, runners, _layouts(runners))
        snaps.started(snap)
        snaps.finish()
        await asyncio.gather(*snaps.services.tasks)
        assert done.result() is not None
        snaps.complete(1, runners)
        assert snaps.local is None and not snaps.in_memory(1)

    asyncio.run(main())
