"""The counter as a Ray user would write it first, against rayfun, both measured in one run.

The first design: counter actors (one per core), each holding a dict of counts; one ``.remote()`` call per
message, at most ``--in-flight`` calls outstanding (so the driver's memory stays bounded), all awaited at
the end. rayfun runs the same workload (bench/counter.py: 1M messages over 10k instances from a source,
2 shards); the Ray baseline runs ``--baseline-messages`` of them (it manages a few thousand a second: the
full million would take minutes). Both final states are checked exact. ``--rounds`` pairs (3), each
measured back to back; the last line is the median of their ratios:

    baseline_ray: rayfun / ray actors = 252x (median of 3 pairs)

    python bench/baseline_ray.py [--messages N] [--baseline-messages N] [--addresses N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import counter
import ray


@ray.remote
class CounterActor:
    """What a Ray user writes first: the counts in a dict, one method call per message."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + value

    def counts_of(self) -> dict[str, int]:
        return self.counts


def baseline_rate(messages: int, addresses: int, actors: int, in_flight: int) -> float:
    """Messages per second through counter actors, one ``.remote()`` per message; checked exact."""
    pool = [CounterActor.remote() for _ in range(actors)]
    ray.get([a.counts_of.remote() for a in pool])  # started before the clock starts
    ids = [str(a) for a in range(addresses)]
    owner = [pool[zlib.crc32(i.encode()) % actors] for i in ids]
    pending: list = []
    began = time.perf_counter()
    for i in range(messages):
        a = i % addresses
        pending.append(owner[a].add.remote(ids[a], counter.value_of(i)))
        if len(pending) >= in_flight:
            _, pending = ray.wait(pending, num_returns=len(pending) // 2)
    ray.get(pending)
    rate = messages / (time.perf_counter() - began)
    got: dict[str, int] = {}
    for counts in ray.get([a.counts_of.remote() for a in pool]):
        got.update(counts)
    expected = counter.expected_state(messages, addresses)
    expected = {k: v for k, v in expected.items() if v}
    if got != expected:
        wrong = [k for k in expected if got.get(k) != expected[k]][:5]
        raise SystemExit(f"WRONG: the Ray baseline's counts differ at {wrong}")
    for a in pool:
        ray.kill(a)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--baseline-messages", type=int, default=20_000)
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=1000, help="most .remote() calls outstanding")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs, each measured back to back (median)")
    args = parser.parse_args()
    ray.init(num_cpus=max(2, args.shards), include_dashboard=False, log_to_driver=False)
    args.checkpoint_dir, args.checkpoint_interval = None, 1.0
    ratios = []
    for round_ in range(1, args.rounds + 1):  # pairs: a slow spell of the machine slows both halves alike
        baseline = baseline_rate(args.baseline_messages, args.addresses, args.shards, args.in_flight)
        rate = counter.run(args)[0]
        ratios.append(rate / baseline)
        print(
            f"round {round_}: ray actors, one .remote() per message: {baseline:,.0f} msgs/s "
            f"({args.baseline_messages} messages); rayfun {rate:,.0f} msgs/s; {ratios[-1]:.0f}x"
        )
    print(f"baseline_ray: rayfun / ray actors = {statistics.median(ratios):.0f}x (median of {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
