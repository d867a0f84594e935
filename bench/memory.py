"""Memory under load: does a shard stay within a small multiple of its live state, whatever the input?

Two cases, each on a local Ray of 2 shards, sampling every shard process's resident memory (RSS) 10x a
second:

- slow async (the workload of tests/core/test_backpressure.py): a fast source (400k records) into an ``async def`` function that sleeps 1 ms per message,
  90 % of the traffic on one key. Prints the most messages a shard held (backlog) and its RSS growth: both
  must stay bounded (the sources wait) instead of growing with the input.
- big state: 300 instances of 5 MB of random bytes (incompressible: the worst case for the Parquet
  copy), checkpointed, 10 % of them rewritten and checkpointed three times, then a shard killed and
  restored. Prints, per shard, (peak RSS - RSS before the state) / live state.

The last line is the big-state figure, the worst shard: ``memory: 1.8x live state`` (target <= 2.5x).

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil
import ray

import rayfun
from rayfun import StatefulFunctions, ValueSpec, simple_type
from rayfun.connectors.memory import MemorySource
from tests.core.test_backpressure import RECORDS, slow_functions
from tests.core.test_backpressure import records as slow_records

BLOB = simple_type("bench/blob", lambda b: b, bytes)
VALUE_BYTES = 5 * 2**20
INSTANCES = 300


class RssSampler:
    """Samples the RSS of the application's shard processes (they change after a recovery)."""

    def __init__(self, app) -> None:
        self.app = app
        self.peak: dict[int, int] = {}  # shard index -> peak RSS (bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> dict[int, int]:
        out = {}
        for st in self.app.shard_metrics():
            try:
                out[st["shard"]] = psutil.Process(st["pid"]).memory_info().rss
            except psutil.Error:
                pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                for index, rss in self.rss().items():
                    self.peak[index] = max(self.peak.get(index, 0), rss)
            except Exception:  # a shard that just died: the next sample sees its replacement
                pass

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def slow_async() -> None:
    app = rayfun.start(
        slow_functions(), shards=2, ingresses=[MemorySource(slow_records, partitions=2, id="bench/fast")], standby=False
    )
    try:
        with RssSampler(app) as sampler:
            before = sampler.rss()
            held, deadline = 0, time.monotonic() + 10
            while time.monotonic() < deadline:
                held = max([held] + [st["backlog"] for st in app.shard_metrics()])
                time.sleep(0.1)
            read = sum(st["ingested"] for st in app.shard_metrics())
        growth = max((sampler.peak.get(i, 0) - before[i]) / 2**20 for i in before)
        print(
            f"slow async: read {read} of {RECORDS} records in 10 s, at most {held} messages held by a shard, "
            f"RSS growth {growth:.0f} MB"
        )
    finally:
        app.stop()


def phase(sampler: RssSampler, name: str) -> None:
    now, peak = sampler.rss(), dict(sampler.peak)
    print(
        f"  {name}: RSS now {[round(v / 2**20) for _, v in sorted(now.items())]} MB, peak so far "
        f"{[round(v / 2**20) for _, v in sorted(peak.items())]} MB",
        flush=True,
    )


def big_state(checkpoint_dir: str) -> float:
    functions = StatefulFunctions()

    @functions.bind("bench/big", specs=[ValueSpec("blob", BLOB)])
    def big(context, message):
        context.storage.blob = os.urandom(VALUE_BYTES)

    app = rayfun.start(functions, shards=2, checkpoint_dir=checkpoint_dir, checkpoint_interval=None, standby=False)
    try:
        with RssSampler(app) as sampler:
            time.sleep(0.5)
            baseline = sampler.rss()
            ids = [f"b{i}" for i in range(INSTANCES)]
            app.send_many([("bench/big", i, 0) for i in ids])
            app.wait(timeout=300)
            phase(sampler, "loaded")
            app.checkpoint()
            phase(sampler, "first checkpoint")
            for round_ in range(3):
                app.send_many([("bench/big", i, round_) for i in ids[round_::10]])
                app.wait(timeout=300)
                app.checkpoint()
            phase(sampler, "three more checkpoints")
            before = app.info()["recoveries"]
            shards = ray.get(app._coordinator.shard_handles.remote())
            ray.kill(shards[0], no_restart=True)
            while app.info()["recoveries"] == before:
                time.sleep(0.1)
            app.wait(timeout=300)
            time.sleep(1)
            phase(sampler, "recovered")
            live = {
                i: sum(ray.get(shards_now.instance_count.remote()).values()) * VALUE_BYTES
                for i, shards_now in enumerate(ray.get(app._coordinator.shard_handles.remote()))
            }
        ratios = {}
        for index in sorted(live):
            grown = sampler.peak.get(index, 0) - baseline.get(index, 0)
            ratios[index] = grown / max(live[index], 1)
            print(
                f"big state: shard {index}: live {live[index] / 2**20:.0f} MB, peak RSS "
                f"{sampler.peak.get(index, 0) / 2**20:.0f} MB (started at {baseline.get(index, 0) / 2**20:.0f} "
                f"MB): {ratios[index]:.2f}x live state"
            )
        return max(ratios.values())
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["slow-async", "big-state"])
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if args.only in (None, "slow-async"):
            slow_async()
        if args.only in (None, "big-state"):
            with tempfile.TemporaryDirectory() as tmp:
                ratio = big_state(os.path.join(tmp, "cp"))
            print(f"memory: {ratio:.1f}x live state")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
