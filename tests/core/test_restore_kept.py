"""A restore that keeps the live state (a rescale's fast path, see ``ShardCore._keeps_live_state``), driven
on one ShardCore without Ray so that each case is exact: the shard held processing from before the
checkpoint, so its instances are the checkpoint's; it drops what it no longer owns, reads only the key
groups it gains, and takes the checkpoint's unprocessed messages from storage. Whenever anything changed
after the cut, the restore must read the state back instead (a kept state would hold work rolled back)."""

from __future__ import annotations

import asyncio

from rayfun.checkpoint import CheckpointStore, StateDelta, StateLayout
from rayfun.keygroups import key_group
from rayfun.runtime.batchcodec import encode_rows
from rayfun.runtime.shard import DRIVER, ShardConfig, ShardCore
from tests.core.test_shard_rollback import INT, _functions, _settle
from tests.support.fakes import Peer

KEY_GROUPS = 64
IDS = [f"k{i}" for i in range(400)]


def _in(id: str, key_group_range: tuple[int, int]) -> bool:
    return key_group_range[0] <= key_group("t/count", id, KEY_GROUPS) < key_group_range[1]


class Driver:
    """Sends batches down the driver's channel, numbered as the coordinator numbers them."""

    def __init__(self, core: ShardCore) -> None:
        self.core, self.seq = core, 0

    async def send(self, ids, value: int = 1) -> None:
        rows = [("t/count", id, None, INT, value) for id in ids]
        await self.core.deliver(DRIVER, self.seq, encode_rows(rows), self.core.generation)
        self.seq += 1
        await _settle()


async def _checkpoint(core: ShardCore, store: CheckpointStore, n: int, others=(), full: bool = False):
    part = await core.checkpoint(n, full)
    store.commit(n, [part, *others], key_groups=KEY_GROUPS)
    await core.checkpoint_complete(n)
    return part


def _counts(core: ShardCore) -> dict[str, int]:
    return {id: cells[0] for id, cells in core.runners["t/count"].state.cell_items()}


def _run(scenario, index: int, shards: int, tmp_path) -> None:
    async def main():
        core = ShardCore(
            index,
            ShardConfig(functions=_functions(), shards=shards, key_groups=KEY_GROUPS, checkpoint_url=str(tmp_path)),
        )
        peers = [Peer() for _ in range(shards)]
        peers[index] = None
        await core.start(peers, [])
        try:
            await scenario(core, CheckpointStore(str(tmp_path)))
        finally:
            await core.stop()

    asyncio.run(main())


def test_a_held_shard_rescaled_up_keeps_its_live_state_and_processes_what_it_held(tmp_path):
    """1 -> 2 shards: shard 0 keeps the instances of its new, smaller range, drops the others, reads no
    state, and runs the messages that arrived while it was held exactly once (from the checkpoint)."""

    async def scenario(core: ShardCore, store: CheckpointStore):
        driver = Driver(core)
        await driver.send(IDS, 1)
        await _checkpoint(core, store, 1)
        core.pause_sources(True, hold=True)
        await driver.send(IDS[:100], 10)  # held: in the mailbox, not run
        assert _counts(core) == {id: 1 for id in IDS}
        part = await _checkpoint(core, store, 2)
        read = []
        load = core.snapshots.store.load_shard
        core.snapshots.store.load_shard = lambda *a, **k: read.append((a, k)) or load(*a, **k)
        new_range = (0, KEY_GROUPS // 2)
        await core.restore(1, [None, Peer()], [], 2, part.meta["driver_seq"])
        await _settle()
        assert core.counters["restores_kept"] == 1 and core.key_group_range == new_range
        assert [k["tables"] for _, k in read] == [("timers", "messages", "egress")]  # no state read
        mine = [id for id in IDS if _in(id, new_range)]
        assert 0 < len(mine) < len(IDS)
        assert _counts(core) == {id: 11 if id in IDS[:100] else 1 for id in mine}
        assert not core.held

    _run(scenario, 0, 1, tmp_path)


def test_a_rescale_down_keeps_what_the_shard_had_and_reads_only_the_key_groups_it_gains(tmp_path):
    """2 -> 1 shards, on shard 0: its own half stays as it is in memory; the other half (written by shard 1)
    is read from the checkpoint, and nothing of its own half is read again."""
    layout = StateLayout.of("t/count", [("n", INT)])
    other = {id: [100 + i] for i, id in enumerate(IDS) if _in(id, (32, 64))}

    async def scenario(core: ShardCore, store: CheckpointStore):
        driver = Driver(core)
        mine = [id for id in IDS if _in(id, (0, 32))]
        await driver.send(mine, 3)
        core.pause_sources(True, hold=True)

        def shard_1(n: int):
            return store.write_shard_part(
                n, 1, (32, 64), key_groups=KEY_GROUPS, full=True, state=[StateDelta(layout, other)]
            )

        pending = asyncio.get_running_loop().create_task(core.checkpoint(1))
        await core.deliver(1, 0, None, 0, 1)  # shard 1's marker
        part = await pending
        store.commit(1, [part, shard_1(1)], key_groups=KEY_GROUPS)
        await core.checkpoint_complete(1)
        read = []
        load = core.snapshots.store.load_shard
        core.snapshots.store.load_shard = lambda *a, **k: read.append((a, k)) or load(*a, **k)
        await core.restore(1, [None], [], 1, part.meta["driver_seq"])
        await _settle()
        assert core.counters["restores_kept"] == 1 and core.key_group_range == (0, 64)
        assert sorted((a[1], k["tables"]) for a, k in read) == [
            ((0, 64), ("timers", "messages", "egress")),
            ((32, 64), ("state",)),
        ]
        assert _counts(core) == {**{id: 3 for id in mine}, **{id: v[0] for id, v in other.items()}}

    _run(scenario, 0, 2, tmp_path)


def test_a_change_after_the_cut_makes_the_restore_read_the_state_back(tmp_path):
    """Not held: the shard runs a message after checkpoint 2's cut. Its live state is then ahead of the
    checkpoint, so the restore reads the state (the change is rolled back, and runs again from the
    checkpoint's messages only if the checkpoint held it: here it came after, so it is gone)."""

    async def scenario(core: ShardCore, store: CheckpointStore):
        driver = Driver(core)
        await driver.send(IDS, 1)
        part = await _checkpoint(core, store, 1)
        await driver.send(IDS[:1], 5)  # after the cut of checkpoint 1: not in it
        assert _counts(core)[IDS[0]] == 6
        await core.restore(1, [None], [], 1, part.meta["driver_seq"])
        await _settle()
        assert core.counters["restores_kept"] == 0
        assert _counts(core) == {id: 1 for id in IDS}

    _run(scenario, 0, 1, tmp_path)


def test_a_checkpoint_that_never_completed_here_makes_the_restore_read_the_state_back(tmp_path):
    """A rollback to checkpoint 1 after a newer checkpoint 2 was cut and written but given up: the changes
    that 2 took are in ``uncommitted`` (nothing in ``changed``), so the live state is not checkpoint 1's."""

    async def scenario(core: ShardCore, store: CheckpointStore):
        driver = Driver(core)
        await driver.send(IDS, 1)
        part = await _checkpoint(core, store, 1)
        await driver.send(IDS[:1], 5)
        await core.checkpoint(2)  # written, never committed: the coordinator gives it up
        core.checkpoint_aborted(2)
        assert not core.runners["t/count"].state.changed
        await core.restore(1, [None], [], 1, part.meta["driver_seq"])
        await _settle()
        assert core.counters["restores_kept"] == 0
        assert _counts(core) == {id: 1 for id in IDS}

    _run(scenario, 0, 1, tmp_path)
