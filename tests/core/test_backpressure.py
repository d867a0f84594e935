"""Backpressure: whatever the input rate, the messages a shard holds stay bounded, and the sources wait.

A slow ``async def`` function used to let its per-address queues take the whole input (8M records read in
20 s while 144k were processed, +400 MB a shard) while the backlog metric showed 0: the queues behind a
running invocation were not counted. Each test here fails on that code."""

from __future__ import annotations

import asyncio
import time

import pytest

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.connectors.memory import MemorySource
from rayfun.runtime.shard import ShardConfig

pytestmark = pytest.mark.timeout(120)

SLOW = "t/slow"
RECORDS = 400_000
# a shard takes deliveries while it holds at most mailbox_high messages (an async function's queues count),
# and its peers may have max_in_flight messages in flight to it, plus one batch each (what two source
# partitions read in a turn)
BOUND = ShardConfig.mailbox_high + ShardConfig.max_in_flight + 2 * 2048


def records(index: int, count: int, start: int = 0):
    keys = 200
    for k in range(index + start * count, RECORDS, count):
        # one hot key takes 90 % of the traffic, the rest is spread
        yield (SLOW, "hot" if k % 10 else str(k % keys), 1)


def slow_functions(asynchronous: bool = True) -> StatefulFunctions:
    functions = StatefulFunctions()

    if asynchronous:

        @functions.bind(SLOW, specs=[ValueSpec("n", IntType)])
        async def slow(context, message):
            await asyncio.sleep(0.001)
            context.storage.n = (context.storage.n or 0) + 1

    else:  # the shard that holds the hot key is busy: a slow shard, the other one forwards to it

        @functions.bind(SLOW, specs=[ValueSpec("n", IntType)])
        def slow_sync(context, message):
            time.sleep(0.001)
            context.storage.n = (context.storage.n or 0) + 1

    return functions


@pytest.mark.parametrize("asynchronous", [True, False], ids=["slow-async-function", "slow-shard"])
def test_a_slow_function_or_shard_holds_the_sources_back(ray_session, asynchronous):
    source = MemorySource(records, partitions=2, id="t/fast")
    app = rayfun.start(slow_functions(asynchronous), shards=2, ingresses=[source], standby=False)
    try:
        peak = ingested = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            statuses = app.shard_metrics()
            peak = max(peak, max(st["backlog"] for st in statuses))
            ingested = sum(st["ingested"] for st in statuses)
            time.sleep(0.05)
        if asynchronous:  # what the invocations applied (a message queued behind a running one is not done)
            done = sum(app.state(SLOW, key, wait=False).get("n", 0) for key in ["hot", *map(str, range(200))])
        else:  # a sync invocation is applied when it is counted; and the busy shard answers a call only
            # between its turns (~0.2 s each): 201 state reads took 41 s of this test
            done = sum(st["processed"] for st in statuses)
        print(f"peak backlog {peak}, read {ingested}, done {done}")
        if asynchronous:
            assert peak > 1000, "the backlog metric does not see the messages behind running invocations"
        assert peak <= BOUND, f"a shard held {peak} messages (bound {BOUND})"
        assert ingested - done <= 2 * BOUND, f"read {ingested}, processed {done}: the sources ran ahead"
        assert ingested < RECORDS, "the sources read everything: nothing held them back"
    finally:
        app.stop()
