"""Live rescale under load: the counter workload over 1,000,000 instances on 2 shards, rescaled to 3 while
a source keeps feeding it; prints the seconds from the request until the application processes at full
rate again (its rate before the rescale, within 10 %), alone on the last line (``rescale: 2.1 s``).

    python bench/rescale.py [--instances N] [--from 2] [--to 3]

The state is checked exactly after the run (every instance's count), so a fast rescale that loses or
repeats work fails loudly instead of printing a figure.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time

import ray

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.connectors.memory import MemorySource

TYPENAME = "bench/counter"
WINDOW_S = 1.0  # the rate is measured over this window
FULL = 0.9  # "full rate": this share of the rate before the rescale


def build_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(TYPENAME, specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + 1

    return functions


def make_records(instances: int, messages: int):
    """Every instance once (the state is there from the start), then round after round of the same."""

    def records(partition: int, partitions: int):
        ids = [str(a) for a in range(instances)]
        return ((TYPENAME, ids[i % instances], 1) for i in range(partition, messages, partitions))

    return records


class RateProbe:
    """Messages processed per second over the last WINDOW_S, sampled every 0.1 s from the shards' counters
    (a shard restored or replaced starts its counter afresh: each shard's own progress is what counts)."""

    def __init__(self, app) -> None:
        self.app = app
        self.samples: list[tuple[float, int]] = []  # (time, messages processed so far, all shards)
        self._last: dict[tuple[int, int, int], int] = {}  # (index, pid, generation) -> processed
        self._total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RateProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                metrics = self.app.shard_metrics()
            except Exception:
                metrics = []
            for m in metrics:
                key = (m["shard"], m["pid"], m["generation"])
                done = m["processed"]
                self._total += max(0, done - self._last.get(key, 0))
                self._last[key] = done
            self.samples.append((time.perf_counter(), self._total))
            time.sleep(0.1)

    def rate(self, at: float) -> tuple[float, float] | None:
        """``(rate, since)``: the rate from the newest sample at least WINDOW_S before the newest sample up
        to ``at`` (the counters are read about twice a second under load), and when that span began."""
        upto = [(t, n) for t, n in self.samples if t <= at]
        if not upto:
            return None
        last_t, last_n = upto[-1]
        earlier = [(t, n) for t, n in upto if t <= last_t - WINDOW_S]
        if not earlier:
            return None
        first_t, first_n = earlier[-1]
        return (last_n - first_n) / (last_t - first_t), first_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--from", dest="start", type=int, default=2)
    parser.add_argument("--to", dest="end", type=int, default=3)
    parser.add_argument("--settle", type=float, default=6.0, help="seconds of steady load before the rescale")
    parser.add_argument("--rounds", type=int, default=10, help="messages per instance (the source outlasts the run)")
    args = parser.parse_args()
    messages = args.instances * args.rounds
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    checkpoints = tempfile.mkdtemp(prefix="rayfun-rescale-")
    source = MemorySource(make_records(args.instances, messages), partitions=6, id="bench/numbers", batch_size=8192)
    app = rayfun.start(
        build_functions(), shards=args.start, ingresses=[source], checkpoint_dir=checkpoints, checkpoint_interval=1.0
    )
    probe = RateProbe(app).start()
    try:
        while (probe.samples[-1][1] if probe.samples else 0) < args.instances:  # every instance has state
            time.sleep(0.2)
        time.sleep(args.settle)
        asked = time.perf_counter()
        measured = probe.rate(asked)
        before = measured[0] if measured else 0.0
        if not before:
            raise SystemExit(f"WRONG: no rate measured before the rescale (samples: {probe.samples[-5:]})")
        checkpoint = app.rescale(args.end)
        returned = time.perf_counter()
        deadline = returned + 60
        back = None
        while time.perf_counter() < deadline:
            time.sleep(0.1)
            now = time.perf_counter()
            measured = probe.rate(now)
            if measured is not None and measured[1] >= returned and measured[0] >= FULL * before:
                back = measured[1]  # the span that ran at full rate began here
                break
        after = (probe.rate(time.perf_counter()) or (0.0, 0.0))[0]
        phases = app.info()["last_rescale_phases"]
        print(
            f"{args.instances:,} instances: {before:,.0f} msgs/s on {args.start} shards; rescale to {args.end} "
            f"from checkpoint {checkpoint} returned after {returned - asked:.2f} s "
            f"({', '.join(f'{k} {v:.2f} s' for k, v in phases.items())}); then {after:,.0f} msgs/s"
        )
        probe.stop()
        app.wait(timeout=900)
        _check(app, args.instances, args.rounds)
    finally:
        probe.stop()
        app.stop()
        shutil.rmtree(checkpoints, ignore_errors=True)
    if back is None:
        raise SystemExit(f"WRONG: the rate never came back to {FULL:.0%} of {before:,.0f} msgs/s within 60 s")
    print(f"rescale: {back - asked:.1f} s")


def _check(app, instances: int, rounds: int) -> None:
    """Once the source is read to its end every instance has counted exactly ``rounds`` (2,000 sampled)."""
    wrong = {}
    for i in range(0, instances, max(1, instances // 2000)):
        count = app.state(TYPENAME, str(i), wait=False).get("count", 0)
        if count != rounds:
            wrong[i] = count
    if wrong:
        raise SystemExit(f"WRONG: instances with a count other than {rounds}: {dict(list(wrong.items())[:5])}")


if __name__ == "__main__":
    main()
