"""Scaling: the counter (bench/counter.py: 1M messages over 10k instances from a source) at 1, 2, 4, 8, 16
shards, as many as the machine's cores allow, each rate exact and its speed-up over 1 shard printed; the
last line is the largest shard count that fits the cores (``scaling: 2 shards 1.85x of 1``).

    python bench/scaling.py [--messages N] [--messages-per-shard N] [--max-shards N]

Each run processes at least ``--messages`` and at least ``--messages-per-shard`` per shard (weak scaling
past 2 shards), so that a run at 16 shards still lasts seconds, not the tenth of a second that start-up
noise would dominate; the rate is what is compared.

What stops scaling first. The data path has no central part: each shard reads its own source partitions,
routes each message to the shard owning its key group and ships batches to peers as pickled Ray actor
calls; the coordinator issues checkpoint barriers and polls each shard's status (every
MONITOR_INTERVAL_S), and the driver is not on the path at all. On one machine the shards' own CPU per
message is the limit (it scales with cores until they run out; a Ray worker per shard). The next limit is
the shard-to-shard traffic: with N shards a message leaves its reading shard with probability (N-1)/N, so
past one machine every message crosses the network and is pickled twice; that is Ray's object transfer
between nodes, and it is what a cluster would have to be sized for (or sources partitioned by key, so that
most messages stay where they are read). The coordinator's work grows with N per barrier and per status
poll (one call per shard), which is small against the data path up to hundreds of shards.
"""

from __future__ import annotations

import argparse
import os

import counter
import ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--messages-per-shard", type=int, default=500_000)
    parser.add_argument("--max-shards", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    counts = [n for n in (1, 2, 4, 8, 16) if n <= max(1, args.max_shards)]
    ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
    rates: dict[int, float] = {}
    for shards in counts:
        run_args = argparse.Namespace(
            messages=max(args.messages, shards * args.messages_per_shard),
            addresses=args.addresses,
            shards=shards,
            checkpoint_dir=None,
            checkpoint_interval=1.0,
        )
        rates[shards] = counter.run(run_args)[0]
        print(f"{shards} shard(s): {rates[shards]:,.0f} msgs/s, {rates[shards] / rates[1]:.2f}x of 1")
    limit = counter.plain_loop_rate(args.messages, args.addresses)
    print(f"plain loop (one core): {limit:,.0f} msgs/s; on {os.cpu_count()} cores")
    for shards, rate in rates.items():
        print(f"{shards} shard(s): {rate / (shards * limit):.2f} of {shards} cores' limit")
    top = counts[-1]
    print(f"scaling: {top} shards {rates[top] / rates[1]:.2f}x of 1")


if __name__ == "__main__":
    main()
