"""A shard fed a trickle (a source that has a few records at each poll) waits a moment between polls instead
of spinning. It used to poll again at once: under bench/latency.py's load (100k msgs/s a shard, a quarter of
what it can take) a shard ran ~10k loop turns a second of ~10 records each and was never idle, and two such
shards starved Ray's own threads on 2 cores (loaded p99 ~50-100 ms). Driven on one ShardCore without Ray,
as in test_shard_rollback."""

from __future__ import annotations

import asyncio
import time

from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.constants import TRICKLE_ROWS, TRICKLE_WAIT_S
from rayfun.io import Source, SourcePartition
from rayfun.runtime.shard import ShardConfig, ShardCore

INT = "io.statefun.types/int"
RATE = 20_000  # records a second: each poll finds a few, far fewer than TRICKLE_ROWS
SECONDS = 1.5


class _TricklePartition(SourcePartition):
    """The records due since the last poll (by the clock), for SECONDS."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.sent = 0
        self.polls = 0

    def next_rows(self):
        self.polls += 1
        elapsed = time.perf_counter() - self.began
        if elapsed > SECONDS:
            return None
        due = int(elapsed * RATE) - self.sent
        rows = [("t/count", f"k{(self.sent + k) % 100}", None, INT, 1) for k in range(due)]
        self.sent += due
        return rows

    def next_batch(self):
        raise AssertionError("next_rows is offered")

    def snapshot(self):
        return self.sent


class _TrickleSource(Source):
    id = "t/trickle"

    def __init__(self) -> None:
        self.partition = _TricklePartition()

    def partitions(self):
        return ["0"]

    def build_partition(self, partition, resume_state):
        return self.partition


def _functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/count", specs=[ValueSpec("n", IntType)])
    def count(context, message):
        context.storage.n = (context.storage.n or 0) + message.as_int()

    return functions


def test_a_trickle_is_polled_about_once_per_wait_not_in_a_spin():
    assert RATE * TRICKLE_WAIT_S < TRICKLE_ROWS, "the source must be a trickle for this test"
    source = _TrickleSource()

    async def main():
        core = ShardCore(0, ShardConfig(functions=_functions(), shards=1, key_groups=64, sources=[source]))
        await core.start([None], [(0, "0", None)])
        try:
            began = time.perf_counter()
            while not core.ingress.exhausted() and time.perf_counter() - began < SECONDS + 10:
                await asyncio.sleep(0.05)
            while core.ingress.backlog:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - began
            return core, elapsed
        finally:
            await core.stop()

    core, elapsed = asyncio.run(main())
    partition = source.partition
    per_second = partition.polls / elapsed
    idle = core.counters["idle_s"] / elapsed
    print(f"{partition.polls} polls in {elapsed:.2f} s ({per_second:.0f}/s), idle {idle:.0%}, {partition.sent} records")
    state = core.runners["t/count"].state
    assert sum(cells[0] for _, cells in state.cell_items()) == partition.sent  # every record processed, once
    # one poll per TRICKLE_WAIT_S at most (plus the turns a delivery or a timer wakes): spinning made ~10k/s
    assert per_second < 2 / TRICKLE_WAIT_S, f"{per_second:.0f} polls a second: the shard spins on a trickle"
    assert idle > 0.5, f"idle {idle:.0%} of the time at {RATE} records/s: the shard spins on a trickle"


class _FirehosePartition(SourcePartition):
    """A full batch at every poll for ``seconds``, then the end."""

    def __init__(self, seconds: float) -> None:
        self.began = time.perf_counter()
        self.seconds = seconds
        self.ended_at: float | None = None
        self.sent = 0

    def next_rows(self):
        if time.perf_counter() - self.began > self.seconds:
            self.ended_at = self.ended_at or time.perf_counter()
            return None
        rows = [("t/count", f"k{(self.sent + k) % 100}", None, INT, 1) for k in range(2048)]
        self.sent += len(rows)
        return rows

    def next_batch(self):
        raise AssertionError("next_rows is offered")

    def snapshot(self):
        return self.sent


def test_a_shard_says_it_is_quiet_only_once_its_work_is_done_and_at_once_then():
    """``until_quiet`` (what app.wait waits on between its looks): False while the shard works, True once
    the work is done (what was read, all processed), without waiting out its timeout."""
    source = _TrickleSource()
    source.partition = _FirehosePartition(0.4)  # type: ignore[assignment]

    async def main():
        core = ShardCore(0, ShardConfig(functions=_functions(), shards=1, key_groups=64, sources=[source]))
        await core.start([None], [(0, "0", None)])
        try:
            answers = [await core.until_quiet(0.02) for _ in range(5)]  # ~0.1 s, while the source flows
            quiet = await core.until_quiet(5.0)
            return answers, quiet, time.perf_counter(), core
        finally:
            await core.stop()

    answers, quiet, answered_at, core = asyncio.run(main())
    partition = source.partition
    assert answers == [False] * 5 and quiet and partition.ended_at is not None
    assert answered_at - partition.ended_at < 1.0, f"quiet said {answered_at - partition.ended_at:.3f} s late"
    state = core.runners["t/count"].state
    assert sum(cells[0] for _, cells in state.cell_items()) == partition.sent  # all of it done when it said so


def test_a_shard_with_an_async_invocation_running_is_not_quiet_until_it_ends():
    """The loop has nothing to do while an ``async def`` function awaits, but the shard is not quiet: the
    coordinator would otherwise be told to look again at once, every time, for as long as it runs."""
    from rayfun.connectors.memory import MemorySource

    release: dict[str, asyncio.Event] = {}
    functions = StatefulFunctions()

    @functions.bind("t/slow", specs=[ValueSpec("n", IntType)])
    async def slow(context, message):
        await release["event"].wait()
        context.storage.n = message.as_int()

    source = MemorySource([("t/slow", "a", 7)], id="t/one")

    async def main():
        release["event"] = asyncio.Event()
        core = ShardCore(0, ShardConfig(functions=functions, shards=1, key_groups=64, sources=[source]))
        await core.start([None], [(0, "0", None)])
        try:
            while not core.ingress.exhausted():
                await asyncio.sleep(0.01)
            running = [await core.until_quiet(0.05) for _ in range(3)]
            release["event"].set()
            ended = await core.until_quiet(5.0)
            return running, ended, core.runners["t/slow"].state.cells_of("a")
        finally:
            await core.stop()

    running, ended, cells = asyncio.run(main())
    assert running == [False] * 3 and ended and cells == [7]
