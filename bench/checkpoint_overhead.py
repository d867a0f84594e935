"""Checkpoint overhead: bench/counter.py over 1,000,000 instances with checkpoints every second, against the
same run without checkpoints. Prints the throughput lost to checkpointing alone on its last line:
``checkpoint overhead: 8.1 %`` (the target is 10 % or less).

2,000,000 messages, so that every instance changes twice and a run of ~7 s takes full and delta
checkpoints alike; runs alternate, and the medians are compared, because a 2-core machine's throughput
varies by 20 % between identical runs.

    python bench/checkpoint_overhead.py [--rounds N] [--messages N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import counter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2_000_000)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    plain, checkpointed = [], []
    for _ in range(args.rounds):
        for directory, results in ((None, plain), ("tmp", checkpointed)):
            run_args = argparse.Namespace(messages=args.messages, addresses=1_000_000, shards=2,
                                          checkpoint_dir=directory, checkpoint_interval=1.0)
            results.append(counter.run(run_args))
    a, b = statistics.median(plain), statistics.median(checkpointed)
    print(f"median without checkpoints {a:.0f} msgs/s, with checkpoints every 1 s {b:.0f} msgs/s "
          f"(runs: {[round(x) for x in plain]} / {[round(x) for x in checkpointed]})")
    print(f"checkpoint overhead: {100 * (1 - b / a):.1f} %")


if __name__ == "__main__":
    main()
