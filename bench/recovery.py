"""Recovery time: 1,000,000 instances, a shard is killed, how long until the job processes at full speed again.

A long ingress keeps two shards busy over 1M counter instances with checkpoints every second. After the
instances exist and a checkpoint holds them, one shard is killed (ray.kill). The figure is the time from
the kill until the processing rate, over a sliding 0.5 s window, is back to 90% of what it was before.
The last line alone: ``recovery: 2.4 s``.

    python bench/recovery.py [--instances N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import ray

import os
import sys

import rayfun
from connectors.memory import MemorySource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counter import TYPENAME, build_functions  # noqa: E402  (the same counter function)


def endless(instances: int):
    def records(partition: int, partitions: int, start: int):
        ids = [str(a) for a in range(instances)]
        i = partition + start * partitions
        while True:  # replayable: the same sequence every time, the position is a count
            yield (TYPENAME, ids[i % instances], 1)
            i += partitions

    return records


def processed(app) -> int:
    return sum(m["processed"] for m in app.metrics())


def rate_over(app, seconds: float) -> float:
    before, t0 = processed(app), time.perf_counter()
    time.sleep(seconds)
    return (processed(app) - before) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    directory = tempfile.mkdtemp(prefix="rayfun-recovery-")
    source = MemorySource(endless(args.instances), partitions=2, id="bench/endless", batch_size=8192)
    app = rayfun.start(build_functions(), shards=2, ingresses=[source], checkpoint_dir=directory,
                       checkpoint_interval=1.0)
    try:
        while processed(app) < args.instances * 1.2:  # every instance exists, with margin
            time.sleep(0.2)
        app.checkpoint()
        instances = sum(sum(c.values()) for c in
                        ray.get([s.instance_count.remote() for s in ray.get(app._coordinator.shard_handles.remote())]))
        before = rate_over(app, 2.0)
        print(f"{instances} instances; processing {before:.0f} msgs/s before the kill")
        shard = ray.get(app._coordinator.shard_handles.remote())[0]
        killed_at = time.perf_counter()
        ray.kill(shard, no_restart=True)
        while app.info()["recoveries"] < 1:
            time.sleep(0.05)
        restored_at = time.perf_counter()
        rates = []
        while True:
            now_rate = rate_over(app, 0.5)
            rates.append(round(now_rate / 1000))
            if now_rate >= 0.9 * before:
                break
            if time.perf_counter() - killed_at > 120:
                raise SystemExit("did not get back to full speed within 120 s")
        back_at = time.perf_counter() - 0.5  # the window that reached full speed started here
        print(f"rates after the restore (k msgs/s per 0.5 s): {rates}")
        print(f"rolled back and restored in {restored_at - killed_at:.2f} s "
              f"(coordinator: {app.info()['last_recovery_s']:.2f} s); full speed ({now_rate:.0f} msgs/s) "
              f"after {back_at - killed_at:.2f} s")
        print(f"recovery: {back_at - killed_at:.1f} s")
    finally:
        app.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
