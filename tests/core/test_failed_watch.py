"""The coordinator keeps one ``failed`` call pending on each shard instead of asking every shard ten times a
second: the call must answer as soon as the shard asks for a rollback, from whichever thread asks (a remote
function's failure is seen on the loop, a checkpoint writer's on its thread), and answer at once while the
failure stands. Driven on one ShardCore without Ray, as in test_shard_rollback."""

from __future__ import annotations

import asyncio
import threading

from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.runtime.shard import ShardConfig, ShardCore


def _core() -> ShardCore:
    functions = StatefulFunctions()

    @functions.bind("t/count", specs=[ValueSpec("n", IntType)])
    def count(context, message):
        context.storage.n = (context.storage.n or 0) + 1

    return ShardCore(0, ShardConfig(functions=functions, shards=1, key_groups=64, sources=[]))


def test_failed_answers_when_the_shard_fails_and_not_before():
    async def main():
        core = _core()
        await core.start([None], [])
        try:
            watch = asyncio.ensure_future(core.failed())
            await asyncio.sleep(0.2)
            assert not watch.done(), "answered although nothing failed"
            assert core.fail("a sink refused epoch 3")
            await asyncio.wait_for(watch, 1.0)
            await asyncio.wait_for(core.failed(), 1.0)  # the failure stands: a new call answers at once
            assert not core.fail("a second reason")  # the first one is kept
            assert core.health()[0] == "a sink refused epoch 3"
        finally:
            await core.stop()

    asyncio.run(main())


def test_a_failure_from_another_thread_wakes_the_pending_call():
    async def main():
        core = _core()
        await core.start([None], [])
        try:
            watch = asyncio.ensure_future(core.failed())
            await asyncio.sleep(0.05)
            thread = threading.Thread(target=core.fail, args=("writing checkpoint 7 failed",))
            thread.start()
            thread.join()
            await asyncio.wait_for(watch, 1.0)  # an Event set from the thread itself would not wake the loop
        finally:
            await core.stop()

    asyncio.run(main())
