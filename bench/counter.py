"""Throughput of the full runtime: 1,000,000 messages from an ingress over 10,000 counter instances.

Each message reads an int state, adds the message's value and writes it back. Two shards (this is sized
for a 2-core machine). Checks the final state is exact. Measured in the same run: the plain-loop limit (the
same work as a plain Python loop on one core, see ``plain_loop_rate``), so that the last line says how close
to the machine's limit the runtime gets, which holds on a noisy machine where the absolute rate does not:

    counter: 1040000 msgs/s (0.27 of 2 cores' limit)

    python bench/counter.py [--messages N] [--addresses N] [--shards N] [--rounds N]

A run of 1M messages lasts under a second here, so a slow spell of this shared machine moves one run by
20 % or more, and the plain loop's own rate moved by up to 2x within minutes (1.6M to 3.2M msgs/s in
session 25): ``--rounds`` runs (5), each between two plain loops (the limit is their mean, so a spell that
starts or ends during the round weighs on both sides), and the last line gives the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.connectors.memory import MemorySource

TYPENAME = "bench/counter"


def build_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(TYPENAME, specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + message.as_int()

    return functions


def value_of(i: int) -> int:
    return i % 7 + 1


def make_records(messages: int, addresses: int):
    def records(partition: int, partitions: int):
        ids = [str(a) for a in range(addresses)]
        # value_of(i), inlined: this generator is the ingress, and its cost is part of what is measured
        return ((TYPENAME, ids[i % addresses], i % 7 + 1) for i in range(partition, messages, partitions))

    return records


def expected_state(messages: int, addresses: int) -> dict[str, int]:
    totals = [0] * addresses
    for i in range(messages):
        totals[i % addresses] += value_of(i)
    return {str(a): t for a, t in enumerate(totals)}


def owned_ids(addresses: int, partition: int, partitions: int) -> list[str]:
    """The ids of ``addresses`` that shard ``partition`` of ``partitions`` owns (rayfun's default key groups)."""
    from rayfun.keygroups import DEFAULT_KEY_GROUPS
    from rayfun.runtime.partitioning import Partitioner

    owner = Partitioner(DEFAULT_KEY_GROUPS, partitions).shard_of
    return [str(a) for a in range(addresses) if owner(TYPENAME, str(a)) == partition]


def make_local_records(messages: int, addresses: int):
    """A diagnostic variant for bench/scaling.py, not the benchmark: partition p (read by shard p) holds
    messages only for the instances shard p owns, so no message crosses to a peer. The same number of
    messages, values and instances as ``make_records``; what it shows is what the crossing costs."""

    def records(partition: int, partitions: int):
        ids = owned_ids(addresses, partition, partitions)
        n = len(ids)
        return ((TYPENAME, ids[(i // partitions) % n], i % 7 + 1) for i in range(partition, messages, partitions))

    return records


def expected_local_state(messages: int, addresses: int, partitions: int) -> dict[str, int]:
    """The counts ``make_local_records``' partitions add up to (its own records, summed here)."""
    records = make_local_records(messages, addresses)
    totals: dict[str, int] = {}
    for p in range(partitions):
        for _, id, value in records(p, partitions):
            totals[id] = totals.get(id, 0) + value
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="checkpoint here (a fresh temporary directory if 'tmp'); default: no checkpoints",
    )
    parser.add_argument("--checkpoint-interval", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5, help="runs, each between two plain loops (medians)")
    args = parser.parse_args()
    cores = max(1, min(args.shards, os.cpu_count() or 1))
    rates, ratios = [], []
    for round_ in range(1, args.rounds + 1):
        before = plain_loop_rate(args.messages, args.addresses)
        rates.append(run(args)[0])
        after = plain_loop_rate(args.messages, args.addresses)
        limit = statistics.fmean([before, after])
        ratios.append(rates[-1] / (cores * limit))
        print(
            f"round {round_}: {rates[-1]:,.0f} msgs/s; plain loop (one core, a function and a context object per "
            f"message): {limit:,.0f} msgs/s ({before:,.0f} before, {after:,.0f} after); {ratios[-1]:.2f} of "
            f"{cores} cores' limit"
        )
    rate, ratio = statistics.median(rates), statistics.median(ratios)
    print(f"counter: {rate:.0f} msgs/s ({ratio:.2f} of {cores} cores' limit)")


class _PlainStorage:
    __slots__ = ("count",)


class _PlainContext:
    """What the plain loop hands the function: an object with a storage attribute, as the runtime does."""

    __slots__ = ("storage",)

    def __init__(self) -> None:
        self.storage = _PlainStorage()


def plain_loop_rate(messages: int, addresses: int) -> float:
    """The physical limit of this workload in Python on one core: per message, a call of the counter's
    body with a new context object whose storage is read and written, state in a dict, and nothing else
    (no routing, no batching, no checkpoints, no Ray). A runtime can get near it, not past it. Exact."""
    ids = [str(a) for a in range(addresses)]
    state: dict[str, int] = {}

    def counter(context, value):
        context.storage.count = (context.storage.count or 0) + value

    began = time.perf_counter()
    for i in range(messages):
        key = ids[i % addresses]
        context = _PlainContext()
        context.storage.count = state.get(key)
        counter(context, i % 7 + 1)
        state[key] = context.storage.count
    rate = messages / (time.perf_counter() - began)
    expected = expected_state(messages, addresses)
    if any(state[a] != expected[a] for a in list(expected)[:: max(1, addresses // 200)]):
        raise SystemExit("WRONG: the plain loop's state is not exact")
    return rate


def run(args) -> tuple[float, float]:
    """One run; returns messages/second after start-up and the shards' CPU microseconds per message."""
    import shutil
    import tempfile

    checkpoint_dir = args.checkpoint_dir
    cleanup = None
    if checkpoint_dir == "tmp":
        checkpoint_dir = cleanup = tempfile.mkdtemp(prefix="rayfun-bench-")

    if not ray.is_initialized():
        ray.init(num_cpus=max(2, args.shards), include_dashboard=False, log_to_driver=True)
    local = getattr(args, "local", False)  # see make_local_records: a diagnostic of bench/scaling.py
    records = (make_local_records if local else make_records)(args.messages, args.addresses)
    source = MemorySource(records, partitions=args.shards, id="bench/numbers", batch_size=16384)
    app = rayfun.start(
        build_functions(),
        shards=args.shards,
        ingresses=[source],
        checkpoint_dir=checkpoint_dir,
        checkpoint_interval=args.checkpoint_interval,
    )
    # The shards start reading as soon as they start: count from when they answered this (their own clock
    # stamps: a busy shard answers between turns, up to 50 ms later), minus what they had done by then.
    before = app._statuses()
    started = statistics.fmean(m["taken_at"] for m in before)
    done_before = sum(m["processed"] for m in before)
    cpu_before = sum(m["cpu_s"] for m in before)
    app.wait(timeout=600)
    elapsed = time.time() - started
    metrics = app._statuses()
    processed = sum(m["processed"] for m in metrics)
    cpu_us = 1e6 * (sum(m["cpu_s"] for m in metrics) - cpu_before) / max(1, processed - done_before)
    if local:
        expected = expected_local_state(args.messages, args.addresses, args.shards)
    else:
        expected = expected_state(args.messages, args.addresses)
    sample = list(expected)[:: max(1, len(expected) // 200)]
    wrong = [a for a in sample if app.state(TYPENAME, a, wait=False).get("count") != expected[a]]
    info = app.info()
    checkpoints = info["last_checkpoint"] if checkpoint_dir else 0
    if checkpoints:
        print(f"{checkpoints} checkpoints, the last took {info['last_checkpoint_s']:.2f} s")
    app.stop()
    if cleanup:
        shutil.rmtree(cleanup, ignore_errors=True)
    if processed != args.messages or wrong:
        raise SystemExit(f"WRONG: processed {processed} of {args.messages}; wrong state at {wrong[:5]}")
    rate = (processed - done_before) / elapsed
    for m in metrics:
        print(
            f"shard {m['index']}: processed {m['processed']}, idle {m['idle_s']:.2f} s, snapshot capture "
            f"{m['snapshot_capture_s']:.2f} s, write {m['snapshot_write_s']:.2f} s "
            f"({m['snapshot_write_cpu_s']:.2f} s CPU), commit {m['snapshot_commit_s']:.2f} s"
        )
    print(
        f"processed {processed} messages over {args.addresses} addresses on {args.shards} shards; "
        f"{processed - done_before} in {elapsed:.2f} s after start-up; state exact at {len(sample)} "
        f"sampled addresses; {checkpoints or 0} checkpoints; shard CPU {cpu_us:.2f} us per message"
    )
    return rate, cpu_us


if __name__ == "__main__":
    main()
