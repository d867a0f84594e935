"""Recovery time: 1,000,000 instances, a shard is killed: how long until the job processes at full speed again.

A long ingress keeps two shards busy over 1M counter instances with checkpoints every second. After the
instances exist and a checkpoint holds them, one shard is killed (ray.kill). The figure is the time from
the kill until the processing rate, over a sliding 1 s window, is back to 90% of what it was before (the
median of the windows of the 5 s before: the rate of a 2-core machine varies by 20 % from second to
second). The rates come from the shards' counters and the times the shards read them (rate_probe.py).
Three kills in a row (shards 0, 1, 0); the last line alone is the median: ``recovery: 2.4 s``.

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
from rate_probe import WINDOW_S, RateProbe  # WINDOW_S: as long as the checkpoint interval


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


def processed(app) -> int:
    return sum(m["processed"] for m in app.shard_metrics())


def kill_and_time(app, probe: RateProbe, victim: int) -> float:
    """Kill shard ``victim``; seconds until a sliding window runs at 90 % of the rate before the kill (the
    median of the windows of the 5 s before: a 2-core machine's rate varies by 20 % from second to second)."""
    time.sleep(5.0 + WINDOW_S)
    now = probe.read_until(time.time() - 1.0)
    before = statistics.median(probe.mean_rate(t, t + WINDOW_S) for t in _steps(now - 5.0 - WINDOW_S, now - WINDOW_S))
    shard = ray.get(app._coordinator.shard_handles.remote())[victim]
    recoveries = app.info()["recoveries"]
    killed_at = time.time()
    ray.kill(shard, no_restart=True)
    while app.info()["recoveries"] == recoveries:
        time.sleep(0.05)
    restored_at = time.time()
    while True:
        time.sleep(0.2)
        # windows from the end of the restore on (one that began earlier would average its catch-up
        # with the outage)
        back = probe.first_window(restored_at, 0.9 * before, probe.read_until(killed_at))
        if back is not None:
            break
        if time.time() - killed_at > 120:
            raise SystemExit("did not get back to full speed within 120 s")
    print(
        f"shard {victim} killed at {before:.0f} msgs/s: rolled back and restored after "
        f"{restored_at - killed_at:.2f} s (coordinator: {app.info()['last_recovery_s']:.2f} s), "
        f"full speed after {back - killed_at:.2f} s"
    )
    return back - killed_at


def _steps(start: float, end: float, step: float = 0.1) -> list[float]:
    return [start + i * step for i in range(int((end - start) / step) + 1)]


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
    probe = None
    try:
        while processed(app) < args.instances * 1.2:  # every instance exists, with margin
            time.sleep(0.2)
        time.sleep(5.0)  # past the first full bases: the rate right after warm-up runs ~15 % high
        instances = sum(
            sum(c.values())
            for c in ray.get([s.instance_count.remote() for s in ray.get(app._coordinator.shard_handles.remote())])
        )
        print(f"{instances} instances on 2 shards, checkpoints every second")
        probe = RateProbe(app).start()
        times = []
        for k in range(args.kills):
            while app.info()["standby"] is None:  # the standby shard is started (a few seconds in)...
                time.sleep(0.1)
            time.sleep(2)  # ... and settled
            times.append(kill_and_time(app, probe, k % 2))
        print(f"recovery: {statistics.median(times):.1f} s")
    finally:
        if probe is not None:
            probe.stop()
        app.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
