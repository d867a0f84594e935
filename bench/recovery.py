"""Recovery time: 1,000,000 instances, a shard is killed: how long until the job processes at full speed again.

A long ingress keeps two shards busy over 1M counter instances with checkpoints every second. After the
instances exist and a checkpoint holds them, one shard is killed (ray.kill). The figure is the time from
the kill until the processing rate, over a sliding 1 s window, is back to 90% of what it was before (the
median of the windows of the 5 s before: the rate of a 2-core machine varies by 20 % from second to
second). Three kills in a row (shards 0, 1, 0); the last line alone is the median: ``recovery: 2.4 s``.

    python bench/recovery.py [--instances N] [--kills N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import ray

import rayfun
from rayfun.connectors.memory import MemorySource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counter import TYPENAME, build_functions


def endless(instances: int):
    ids: list[str] = []  # made once per process: a restore reopens the partitions (a real source seeks)

    def records(partition: int, partitions: int, start: int):
        if not ids:
            ids.extend(str(a) for a in range(instances))
        i = partition + start * partitions
        while True:  # replayable: the same sequence every time, the position is a count
            yield (TYPENAME, ids[i % instances], 1)
            i += partitions

    return records


WINDOW_S = 1.0  # as long as the checkpoint interval, so that every window holds a checkpoint
SAMPLE_S = 0.1


def processed(app) -> int:
    return sum(m["processed"] for m in app.shard_metrics())


def sample(app, seconds: float) -> list[tuple[float, int]]:
    """(time, messages processed so far), every SAMPLE_S for ``seconds``."""
    out = [(time.perf_counter(), processed(app))]
    while out[-1][0] - out[0][0] < seconds:
        time.sleep(SAMPLE_S)
        out.append((time.perf_counter(), processed(app)))
    return out


def window_rates(samples: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """(start, msgs/s over the WINDOW_S from there) for every sample that has a full window after it."""
    rates = []
    for i, (t0, p0) in enumerate(samples):
        later = next(((t, p) for t, p in samples[i:] if t - t0 >= WINDOW_S), None)
        if later is not None:
            rates.append((t0, (later[1] - p0) / (later[0] - t0)))
    return rates


def kill_and_time(app, victim: int) -> float:
    """Kill shard ``victim``; seconds until a sliding window runs at 90 % of the rate before the kill (the
    median of the windows of the 5 s before: a 2-core machine's rate varies by 20 % from second to second)."""
    before = statistics.median(r for _, r in window_rates(sample(app, 5.0)))
    shard = ray.get(app._coordinator.shard_handles.remote())[victim]
    recoveries = app.info()["recoveries"]
    killed_at = time.perf_counter()
    ray.kill(shard, no_restart=True)
    while app.info()["recoveries"] == recoveries:
        time.sleep(0.05)
    restored_at = time.perf_counter()
    samples = [(restored_at, processed(app))]
    while True:
        time.sleep(SAMPLE_S)
        samples.append((time.perf_counter(), processed(app)))
        back = next((t for t, r in window_rates(samples) if r >= 0.9 * before), None)
        if back is not None:
            break
        if time.perf_counter() - killed_at > 120:
            raise SystemExit("did not get back to full speed within 120 s")
    print(
        f"shard {victim} killed at {before:.0f} msgs/s: rolled back and restored after "
        f"{restored_at - killed_at:.2f} s (coordinator: {app.info()['last_recovery_s']:.2f} s), "
        f"full speed after {back - killed_at:.2f} s"
    )
    return back - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=3, help="kills, one after the other; the median is printed")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    directory = tempfile.mkdtemp(prefix="rayfun-recovery-")
    source = MemorySource(endless(args.instances), partitions=2, id="bench/endless", batch_size=8192)
    app = rayfun.start(
        build_functions(), shards=2, ingresses=[source], checkpoint_dir=directory, checkpoint_interval=1.0
    )
    try:
        while processed(app) < args.instances * 1.2:  # every instance exists, with margin
            time.sleep(0.2)
        time.sleep(5.0)  # past the first full bases: the rate right after warm-up runs ~15 % high
        instances = sum(
            sum(c.values())
            for c in ray.get([s.instance_count.remote() for s in ray.get(app._coordinator.shard_handles.remote())])
        )
        print(f"{instances} instances on 2 shards, checkpoints every second")
        times = []
        for k in range(args.kills):
            while app.info()["standby"] is None:  # the standby shard is started (a few seconds in)...
                time.sleep(0.1)
            time.sleep(2)  # ... and settled
            times.append(kill_and_time(app, k % 2))
        print(f"recovery: {statistics.median(times):.1f} s")
    finally:
        app.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
