"""Races around a rollback, driven on one ShardCore without Ray (peers are stand-ins whose calls the test
answers or leaves pending), so each interleaving is exact rather than left to chance.

Both were real: each left the chaos test's application never idle after a recovery."""

from __future__ import annotations

import asyncio
import threading

from rayfun import IntType, StatefulFunctions, ValueSpec, message_builder
from rayfun.runtime.batchcodec import encode_rows
from rayfun.runtime.shard import DRIVER, ShardConfig, ShardCore
from tests.support.fakes import Peer

INT = "io.statefun.types/int"


def _functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/count", specs=[ValueSpec("n", IntType)])
    def count(context, message):
        if message.as_int() == 0:
            del context.storage.n
        else:
            context.storage.n = (context.storage.n or 0) + message.as_int()

    @functions.bind("t/forward")
    def forward(context, message):
        context.send(message_builder("t/count", "to-" + context.address.id, int_value=message.as_int()))

    return functions


def _id_on(core: ShardCore, typename: str, shard: int) -> str:
    return next(f"k{i}" for i in range(10_000) if core.partitioner.shard_of(typename, f"k{i}") == shard)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


def _run(scenario, shards: int = 2, checkpoint_url: str | None = None) -> None:
    """Run ``scenario(core, peers)`` on started shard 0 of ``shards`` (peers[0] is the shard itself, never
    called; the others are stand-ins), and stop the shard afterwards."""

    async def main():
        core = ShardCore(
            0, ShardConfig(functions=_functions(), shards=shards, key_groups=64, checkpoint_url=checkpoint_url)
        )
        peers = [None] + [Peer() for _ in range(shards - 1)]
        await core.start(peers, [])
        try:
            await scenario(core, peers)
        finally:
            await core.stop()

    asyncio.run(main())


def test_a_delivery_pending_at_rollback_does_not_unbalance_the_outstanding_count():
    async def scenario(core, peers):
        # t/forward on shard 0 sends to t/count on shard 1: one batch to the peer, left unanswered
        fid = next(
            f"k{i}"
            for i in range(10_000)
            if core.partitioner.shard_of("t/forward", f"k{i}") == 0
            and core.partitioner.shard_of("t/count", f"to-k{i}") == 1
        )
        await core.deliver(DRIVER, 0, encode_rows([("t/forward", fid, None, INT, 5)]), 0)
        await _settle()
        assert len(peers[1].deliver.calls) == 1 and core.status().outstanding == 1
        await core.restore(1, peers, [], None)  # rolls back; the pending delivery task is cancelled
        await _settle()
        assert core.status().outstanding == 0

    _run(scenario)


def test_a_batch_of_the_next_generation_that_arrives_before_the_rollback_is_kept():
    async def scenario(core, peers):
        cid = _id_on(core, "t/count", 0)
        # a peer that already rolled back to generation 1 sends before this shard is told to roll back
        early = asyncio.get_running_loop().create_task(
            core.deliver(1, 0, encode_rows([("t/count", cid, None, INT, 7)]), 1)
        )
        await _settle()
        assert not early.done(), "the batch must wait for the rollback, not be dropped"
        await core.restore(1, peers, [], None)
        await early
        await _settle()
        st = core.status()
        assert st.received == {1: 1} and st.processed == 1
        assert core.get_state("t/count", cid) == {"n": 7}

    _run(scenario)


def test_a_batch_of_an_older_generation_is_dropped():
    async def scenario(core, peers):
        await core.restore(2, peers, [], None)
        cid = _id_on(core, "t/count", 0)
        await core.deliver(1, 0, encode_rows([("t/count", cid, None, INT, 7)]), 1)
        await _settle()
        assert core.status().received == {} and core.get_state("t/count", cid) == {}

    _run(scenario)


def test_a_rollback_superseded_while_it_reads_its_checkpoint_does_not_win(tmp_path):
    """The coordinator falls back to an older checkpoint (the newest is damaged) while a shard still reads
    the newest: the late read must not overwrite what the newer rollback loaded."""
    import threading

    from rayfun.checkpoint import CheckpointStore, StateDelta, StateLayout

    async def scenario(core, peers):
        store = CheckpointStore(str(tmp_path))
        layout = StateLayout.of("t/count", core.runners["t/count"].state.specs)
        for n, count in ((1, 1), (2, 2)):
            part = store.write_shard_part(
                n, 0, (0, 64), key_groups=64, parent_id=n - 1 or None, state=[StateDelta(layout, {"c": [count]})]
            )
            store.commit(n, [part], key_groups=64)
        release = threading.Event()
        load = core.snapshots.store.load_shard

        def slow_load(checkpoint_id, key_group_range):
            if checkpoint_id == 2:
                release.wait(10)
            return load(checkpoint_id, key_group_range)

        core.snapshots.store.load_shard = slow_load
        first = asyncio.get_running_loop().create_task(core.restore(1, peers, [], 2))
        await _settle()
        await core.restore(2, peers, [], 1)  # the fallback, while the first still reads
        release.set()
        await first
        await _settle()
        assert core.get_state("t/count", "c") == {"n": 1} and core.status().generation == 2

    _run(scenario, shards=1, checkpoint_url=str(tmp_path))


def test_full_bases_follow_the_size_of_the_deltas_not_a_fixed_interval(tmp_path):
    """Few changes: deltas for a long time (a base at fixed intervals would rewrite all state). Many
    changes: a base as soon as the deltas outgrow the state (a restore reads a bounded chain)."""
    from rayfun.checkpoint import CheckpointStore
    from rayfun.runtime.shard import FULL_AFTER

    async def scenario(core, peers):
        store = CheckpointStore(str(tmp_path))
        seq = 0

        async def send(ids):
            nonlocal seq
            await core.deliver(DRIVER, seq, encode_rows([("t/count", i, None, INT, 1) for i in ids]), 0)
            seq += 1
            await _settle()

        async def checkpoint(n):
            part = await core.checkpoint(n)
            store.commit(n, [part], key_groups=64)
            await core.checkpoint_complete(n)
            return part.full

        await send([f"k{i}" for i in range(1000)])
        assert await checkpoint(1)  # the first is a base
        fulls = []
        for n in range(2, 12):  # 1 % of the instances change per checkpoint
            await send([f"k{i}" for i in range(n * 10, n * 10 + 10)])
            fulls.append(await checkpoint(n))
        assert not any(fulls)
        fulls = []
        for n in range(12, 20):  # all of them change per checkpoint
            await send([f"k{i}" for i in range(1000)])
            fulls.append(await checkpoint(n))
        expected, chain = [], 100  # a base once the deltas would exceed FULL_AFTER times the 1000 live rows
        for _ in fulls:
            expected.append(chain + 1000 > FULL_AFTER * 1000)
            chain = 0 if expected[-1] else chain + 1000
        assert fulls == expected and 2 <= sum(expected) < len(expected), (fulls, FULL_AFTER)
        assert core.get_state("t/count", "k0") == {"n": 9}

    _run(scenario, shards=1, checkpoint_url=str(tmp_path))


def test_the_first_base_is_the_recorded_changes_later_bases_every_instance(tmp_path):
    """Before the first checkpoint the state was empty, so the changes recorded since are all of it: the
    first base is written from them (an instance created and deleted meanwhile is left out). A later full
    snapshot writes every live instance, not only those changed since."""
    from rayfun.checkpoint import CheckpointStore

    async def scenario(core, peers):
        store = CheckpointStore(str(tmp_path))

        async def send(seq, rows):
            await core.deliver(DRIVER, seq, encode_rows([("t/count", i, None, INT, v) for i, v in rows]), 0)
            await _settle()

        async def checkpoint(n, full=False):
            part = await core.checkpoint(n, full)
            store.commit(n, [part], key_groups=64)
            await core.checkpoint_complete(n)
            return part, store.load_shard(n, core.key_group_range).instances("t/count", [("n", INT)])

        await send(0, [(f"k{i}", 1) for i in range(5)] + [("k2", 0)])
        part, state = await checkpoint(1)
        assert part.full and state == {"k0": [1], "k1": [1], "k3": [1], "k4": [1]}
        await send(1, [("k0", 5)])
        part, state = await checkpoint(2, full=True)
        assert part.full and state == {"k0": [6], "k1": [1], "k3": [1], "k4": [1]}
        await send(2, [("k1", 0)])
        part, state = await checkpoint(3)
        assert not part.full and state == {"k0": [6], "k3": [1], "k4": [1]}

    _run(scenario, shards=1, checkpoint_url=str(tmp_path))


def test_a_shard_with_a_rollback_pending_refuses_the_cut(tmp_path):
    """A failure (a remote batch that failed for good, an epoch that could not be published) drops what
    failed from what is in flight; a cut taken before the rollback would miss it, and the rollback would go
    to that cut. The shard refuses the cut, whether the coordinator or a peer's marker starts it, and
    takes checkpoints again once it has rolled back."""
    import pytest

    from rayfun.runtime.shard import CheckpointRefused

    async def scenario(core, peers):
        core.fail("remote function r/x failed for good")
        with pytest.raises(CheckpointRefused, match="a rollback is pending"):
            await core.checkpoint(1)
        markers = [c for c in peers[1].deliver.calls if c[2] is None]
        assert [c[4] for c in markers] == [1], "the peer still gets its marker"
        await core.deliver(1, 0, None, 0, 2)  # a peer's marker starts checkpoint 2: refused as well
        with pytest.raises(CheckpointRefused):
            await core.checkpoint(2)
        await core.restore(1, peers, [], None)
        cid = _id_on(core, "t/count", 0)
        await core.deliver(DRIVER, 0, encode_rows([("t/count", cid, None, INT, 3)]), 1)
        await _settle()
        pending = asyncio.get_running_loop().create_task(core.checkpoint(3))
        await _settle()
        await core.deliver(1, 0, None, 1, 3)
        part = await pending
        assert part.checkpoint_id == 3 and part.files["state"].rows == 1

    _run(scenario, checkpoint_url=str(tmp_path))


def test_an_aborted_checkpoint_loses_nothing_and_its_late_markers_are_ignored(tmp_path):
    """A checkpoint that failed (storage down) is aborted: the next one, with a new id, holds every change
    since the last complete checkpoint, and a marker of the aborted one arriving late starts nothing."""
    from rayfun.checkpoint import CheckpointStore

    async def scenario(core, peers):
        store = CheckpointStore(str(tmp_path))
        cid = _id_on(core, "t/count", 0)
        await core.deliver(DRIVER, 0, encode_rows([("t/count", cid, None, INT, 5)]), 0)
        await _settle()
        write = core.snapshots.store.write_shard_part

        def storage_down(*args, **kwargs):
            raise OSError("storage is down")

        core.snapshots.store.write_shard_part = storage_down
        pending = asyncio.get_running_loop().create_task(core.checkpoint(1))
        await core.deliver(1, 0, None, 0, 1)
        try:
            await pending
            raise AssertionError("the write should have failed")
        except OSError:
            pass
        core.checkpoint_aborted(1)
        core.snapshots.store.write_shard_part = write
        await core.deliver(DRIVER, 1, encode_rows([("t/count", cid, None, INT, 2)]), 0)
        await _settle()
        pending = asyncio.get_running_loop().create_task(core.checkpoint(2))
        await _settle()
        await core.deliver(1, 1, None, 0, 2)
        part = await pending
        store.commit(2, [part, _empty_part(store, 2)], key_groups=64)
        await core.checkpoint_complete(2)
        await core.deliver(1, 2, None, 0, 1)  # a late marker of the aborted checkpoint
        await _settle()
        assert core.snapshots.current is None and 1 not in core.snapshots.done
        restored = store.load_shard(2, core.key_group_range).instances("t/count", [("n", INT)])
        assert restored == {cid: [7]}

    _run(scenario, checkpoint_url=str(tmp_path))


def _empty_part(store, checkpoint_id: int):
    """Shard 1's (empty) part of a checkpoint of two shards, standing in for the peer."""
    return store.write_shard_part(checkpoint_id, 1, (32, 64), key_groups=64, full=True)


def test_a_delay_past_the_clock_is_refused_before_anything_is_applied(tmp_path):
    """A remote function answered with delay_in_ms = 2**63-1: the timer's due time had no 64-bit form,
    and every checkpoint after failed. The effects are refused as a whole (the runner dead-letters the
    message); the shard's timers and checkpoints are untouched."""
    import pytest

    from rayfun.runtime.timers import InvalidEffect

    async def scenario(core, peers):
        later = message_builder("t/count", "k", int_value=1)
        with pytest.raises(InvalidEffect, match="past the latest time a timer can hold"):
            core.apply_effects("t/forward", "f", [later], [(2**63 - 1, later, "")], None, core.now_ms())
        assert len(core.timers) == 0 and core.outbox.out == [None]
        part = await core.checkpoint(1)
        assert part.files["timers"].rows == 0

    _run(scenario, shards=1, checkpoint_url=str(tmp_path))


# -- the pending ``failed`` call the coordinator keeps on each shard instead of polling its health -----------


def test_failed_answers_when_the_shard_fails_not_before_and_not_after_the_rollback():
    async def scenario(core, peers):
        watch = asyncio.ensure_future(core.failed())
        await asyncio.sleep(0.2)
        assert not watch.done(), "answered although nothing failed"
        assert core.fail("a sink refused epoch 3")
        await asyncio.wait_for(watch, 1.0)
        await asyncio.wait_for(core.failed(), 1.0)  # the failure stands: a new call answers at once
        assert not core.fail("a second reason")  # the first one is kept
        assert core.health()[0] == "a sink refused epoch 3"
        await core.restore(1, peers, [], None)  # the rollback clears the failure: the next call waits again
        watch = asyncio.ensure_future(core.failed())
        await asyncio.sleep(0.2)
        assert not watch.done() and core.health()[0] is None, "the rollback left the failure standing"
        watch.cancel()

    _run(scenario, shards=1)


def test_a_failure_from_another_thread_wakes_the_pending_call():
    async def scenario(core, peers):
        watch = asyncio.ensure_future(core.failed())
        await asyncio.sleep(0.05)
        thread = threading.Thread(target=core.fail, args=("writing checkpoint 7 failed",))
        thread.start()
        thread.join()
        await asyncio.wait_for(watch, 1.0)  # an Event set from the thread itself would not wake the loop

    _run(scenario, shards=1)


def test_a_failure_from_a_thread_after_the_loop_closed_is_kept_not_raised():
    """A writer or source thread may fail the shard while it shuts down: the loop that waited is closed
    (``call_soon_threadsafe`` raises there), and the failure must still be recorded, not crash the thread."""
    holder = {}

    async def scenario(core, peers):
        watch = asyncio.ensure_future(core.failed())
        await asyncio.sleep(0.05)
        holder["core"] = core
        watch.cancel()

    _run(scenario, shards=1)  # asyncio.run has closed its loop now
    core = holder["core"]
    errors = []

    def fail_late():
        try:
            errors.append(core.fail("late failure"))
        except Exception as exc:  # the bug: RuntimeError('Event loop is closed') in the failing thread
            errors.append(exc)

    thread = threading.Thread(target=fail_late)
    thread.start()
    thread.join()
    assert errors == [True] and core.health()[0] == "late failure"
