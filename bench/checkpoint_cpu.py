"""Checkpoint cost in CPU, without Ray and without the machine's noise: one shard core in this process, a
counter over 500,000 instances, batches of 4,096 messages delivered as a peer would, and a checkpoint (cut,
write, commit, complete) every ``--every`` messages, or none. The CPU of the whole process (every thread:
the writer's too) per message, the two modes alternating; the last line is the median of the rounds'
ratios: ``checkpoint cpu: +9.1 % a message``.

bench/checkpoint_overhead.py is issue 15's figure (2 shards on Ray, a checkpoint every second): its pairs
move by 10-20 % on a shared 2-core machine, more than the effect. This isolates the shard's own cost, so a
change to the checkpoint path can be judged in one run. At the default ``--every`` a shard checkpoints about
as often per message as in the overhead benchmark (~550k messages a second per shard, one a second).

    python bench/checkpoint_cpu.py [--rounds N] [--messages N] [--every N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time

from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.checkpoint import CheckpointStore
from rayfun.runtime.batchcodec import encode_rows
from rayfun.runtime.shard import DRIVER, ShardConfig, ShardCore

INT = "io.statefun.types/int"
INSTANCES, BATCH = 500_000, 4_096


def functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("bench/counter", specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + message.as_int()

    return functions


async def run(batches: list, every: int, checkpoints: bool) -> float:
    """CPU ns per message of one run (the shard's start-up and its first checkpoint left out)."""
    url = tempfile.mkdtemp(prefix="rayfun-bench-")
    core = ShardCore(0, ShardConfig(functions=functions(), shards=1, key_groups=64, checkpoint_url=url))
    store = CheckpointStore(url)
    try:
        await core.start([None], [])
        warm = encode_rows([("bench/counter", str(i), None, INT, 1) for i in range(INSTANCES)])
        await core.deliver(DRIVER, 0, warm, core.generation)  # every instance exists before the clock starts
        while core.counters["processed"] < INSTANCES:
            await asyncio.sleep(0.01)
        n = 1

        async def checkpoint() -> None:
            part = await core.checkpoint(n)
            store.commit(n, [part], key_groups=64)
            await core.checkpoint_complete(n)

        if checkpoints:
            await checkpoint()  # the first is a full base of every instance: not the steady state
        cpu, since = time.process_time(), 0
        for seq, batch in enumerate(batches, start=1):
            await core.deliver(DRIVER, seq, batch, core.generation)
            since += BATCH
            if since >= every:
                since = 0
                await asyncio.sleep(0)
                if checkpoints:
                    n += 1
                    await checkpoint()
        target = INSTANCES + len(batches) * BATCH
        while core.counters["processed"] < target:
            await asyncio.sleep(0.002)
        return (time.process_time() - cpu) / (len(batches) * BATCH) * 1e9
    finally:
        await core.stop()
        shutil.rmtree(url, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--every", type=int, default=550_000, help="messages between checkpoints")
    args = parser.parse_args()
    rng = random.Random(1)
    batches = [
        encode_rows([("bench/counter", str(rng.randrange(INSTANCES)), None, INT, 1) for _ in range(BATCH)])
        for _ in range(args.messages // BATCH)
    ]
    ratios = []
    for round_ in range(1, args.rounds + 1):
        plain = await run(batches, args.every, checkpoints=False)
        checkpointed = await run(batches, args.every, checkpoints=True)
        ratios.append(checkpointed / plain - 1)
        print(
            f"round {round_}: {plain:.0f} ns CPU a message without checkpoints, {checkpointed:.0f} with one "
            f"every {args.every:,} messages: {100 * ratios[-1]:+.1f} %"
        )
    print(f"checkpoint cpu: {100 * statistics.median(ratios):+.1f} % a message")


if __name__ == "__main__":
    asyncio.run(main())
