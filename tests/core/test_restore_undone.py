"""A shard that survives a failure rolls back by undoing what changed since the checkpoint (see
``ShardCore._changed_since``): only the changed instances are read back from its in-memory copy. Driven on
one ShardCore without Ray, seeded (``RAYFUN_TEST_SEED`` replays one), against the state the shard held at
each complete checkpoint: random batches over four kinds of state (a single int, the slot runner; a
single float, held as a value too but run by the general runner; two values, one of them deleted at times;
an expiring value), checkpoints that complete, cuts that never do,
and rollbacks, also several in a row with no checkpoint between them. Afterwards a second shard restores
the last checkpoint from storage and must hold the same state: the deltas written after undone rollbacks
are right too."""

from __future__ import annotations

import asyncio
import os
import random
from datetime import timedelta

import pytest

from rayfun import FloatType, IntType, StatefulFunctions, StringType, ValueSpec
from rayfun.checkpoint import CheckpointStore
from rayfun.runtime import shard as shard_module
from rayfun.runtime.batchcodec import encode_rows
from rayfun.runtime.runners import state as state_module
from rayfun.runtime.shard import DRIVER, ShardConfig, ShardCore
from tests.core.test_shard_rollback import INT, _settle

TYPES = ("u/count", "u/float", "u/pair", "u/ttl")
IDS = [f"i{k}" for k in range(150)]


def _functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("u/count", specs=[ValueSpec("n", IntType)])
    def count(context, message):
        if message.as_int() == 0:
            del context.storage.n
        else:
            context.storage.n = (context.storage.n or 0) + message.as_int()

    @functions.bind("u/float", specs=[ValueSpec("x", FloatType)])
    def half(context, message):  # a float: not the slot runner's (it rounds as it is written)
        if message.as_int() == 0:
            del context.storage.x
        else:
            context.storage.x = (context.storage.x or 0.0) + message.as_int() / 2

    @functions.bind("u/pair", specs=[ValueSpec("n", IntType), ValueSpec("s", StringType)])
    def pair(context, message):
        v = message.as_int()
        if v == 0:
            del context.storage.n
            del context.storage.s
            return
        context.storage.n = (context.storage.n or 0) + v
        if v % 2:
            context.storage.s = (context.storage.s or "") + str(v)
        else:
            del context.storage.s

    @functions.bind("u/ttl", specs=[ValueSpec("n", IntType, expire_after_write=timedelta(hours=1))])
    def ttl(context, message):
        context.storage.n = message.as_int()

    return functions


def _state(core: ShardCore) -> dict[str, dict[str, list]]:
    return {t: {id: list(cells) for id, cells in core.runners[t].state.cell_items()} for t in TYPES}


def _core(tmp_path) -> ShardCore:
    return ShardCore(0, ShardConfig(functions=_functions(), shards=1, key_groups=64, checkpoint_url=str(tmp_path)))


@pytest.mark.parametrize("seed,squeeze", [(None, False), (7, False), (None, True)])
def test_a_survivor_rolls_back_by_undoing_its_changes_and_stays_exact(tmp_path, seed, squeeze, monkeypatch):
    monkeypatch.setattr(shard_module, "UNDO_MAX_SHARE", 1e9)  # undo however much changed: the path under test
    squeezes = []
    if squeeze:  # u/count's column state renumbers its slots at most cuts (deleted instances leave holes)
        monkeypatch.setattr(state_module, "SQUEEZE_MIN_HOLES", 2)
        squeeze_now = state_module.ColumnState._squeeze
        monkeypatch.setattr(state_module.ColumnState, "_squeeze", lambda self: squeezes.append(squeeze_now(self)))
    seed = int(os.environ.get("RAYFUN_TEST_SEED", seed if seed is not None else random.randrange(1 << 30)))
    print(f"seed {seed} (RAYFUN_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)

    async def main():
        store = CheckpointStore(str(tmp_path))
        core = _core(tmp_path)
        await core.start([None], [])
        seq, n, generation, last, expected, rollbacks = 0, 0, 0, None, None, 0

        async def send():
            nonlocal seq
            rows = [
                (rng.choice(TYPES), rng.choice(IDS), None, INT, rng.choice([0, 1, 2, 3, 5, -4]))
                for _ in range(rng.randint(1, 80))
            ]
            await core.deliver(DRIVER, seq, encode_rows(rows), core.generation)
            seq += 1
            await _settle()

        try:
            for _ in range(40):
                for _ in range(rng.randint(1, 3)):
                    await send()
                action = rng.random()
                if action < 0.4 or last is None:  # a checkpoint that completes
                    n += 1
                    part = await core.checkpoint(n)
                    store.commit(n, [part], key_groups=64)
                    await core.checkpoint_complete(n)
                    last, expected = n, _state(core)
                elif action < 0.55:  # a cut that never completes: the failure comes first
                    n += 1
                    await core.checkpoint(n)
                else:  # failures, one or several in a row with no checkpoint between them
                    for _ in range(rng.choice([1, 1, 2, 3])):
                        generation += 1
                        await core.restore(generation, [None], [], last)
                        seq = 0  # the driver's channel starts over with the generation
                        await _settle()
                        # nothing changed since the checkpoint (a rollback right after one): kept as it is
                        fast = core.counters["restores_undone"] + core.counters["restores_kept"]
                        assert fast == rollbacks + 1, "the survivor read its whole state back"
                        rollbacks = fast
                        assert _state(core) == expected, f"seed {seed}: rolled back to something else"
                        if rng.random() < 0.5:
                            await send()
            n += 1
            part = await core.checkpoint(n)
            store.commit(n, [part], key_groups=64)
            await core.checkpoint_complete(n)
            final, undone = _state(core), core.counters["restores_undone"]
        finally:
            await core.stop()
        assert undone >= 3, f"seed {seed}: too few rollbacks to mean anything ({undone})"
        assert squeezes or not squeeze, f"seed {seed}: no cut squeezed the holes out"
        fresh = _core(tmp_path)
        await fresh.start([None], [])
        try:
            await fresh.restore(1, [None], [], n)
            await _settle()
            assert _state(fresh) == final, f"seed {seed}: storage holds another state than the shard"
        finally:
            await fresh.stop()

    asyncio.run(main())


def test_a_survivor_restores_all_its_state_once_most_of_it_changed(tmp_path):
    """Undoing costs about twice as much an instance as restoring: past UNDO_MAX_SHARE of the instances
    changed, the survivor folds and decodes its whole copy instead, and lands on the same state."""

    async def main():
        store = CheckpointStore(str(tmp_path))
        core = _core(tmp_path)
        await core.start([None], [])
        seq = 0

        async def send(ids, value):
            nonlocal seq
            rows = [("u/count", id, None, INT, value) for id in ids]
            await core.deliver(DRIVER, seq, encode_rows(rows), core.generation)
            seq += 1
            await _settle()

        try:
            await send(IDS[:100], 1)
            part = await core.checkpoint(1)
            store.commit(1, [part], key_groups=64)
            await core.checkpoint_complete(1)
            expected = _state(core)
            for generation, changed in ((1, 10), (2, 80)):  # 10 % of the instances, then 80 %
                await send(IDS[:changed], 2)
                await send(IDS[100 : 100 + changed // 10], 3)  # new since the checkpoint: must go
                await core.restore(generation, [None], [], 1)
                seq = 0
                await _settle()
                assert _state(core) == expected
            assert core.counters["restores_undone"] == 1  # the first; the second restored everything
        finally:
            await core.stop()

    asyncio.run(main())
