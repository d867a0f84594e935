"""Live rescale under load: the counter workload over 1,000,000 instances on 2 shards, rescaled to 3 while
a source keeps feeding it; prints the seconds from the request until the application processes at full
rate again, alone on the last line (``rescale: 2.1 s``).

    python bench/rescale.py [--instances N] [--from 2] [--to 3] [--trace]

"Full rate" is 90 % of the lower of two means over 3 s: the rate before the rescale, and the rate the new
layout sustains at the end of the run (``--after`` seconds after the rescale returned). On a machine with
more cores than shards the second is the higher; on fewer (3 shards on this 2-core machine) the new layout
cannot reach the old rate, and what counts is how soon it reaches its own. Both rates are printed.

The state is checked exactly after the run (every instance's count), so a fast rescale that loses or
repeats work fails loudly instead of printing a figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import ray

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec
from rayfun.connectors.memory import MemorySource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rate_probe import RateProbe

TYPENAME = "bench/counter"
SPAN_S = 3.0  # the rates before and after the rescale are means over this span
FULL = 0.9  # "full rate": this share of the rate before the rescale


def build_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(TYPENAME, specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + 1

    return functions


def make_records(instances: int, messages: int):
    """Every instance once (the state is there from the start), then round after round of the same. The
    factory resumes at a record (as a real source seeks), so a restore does not skip through a generator."""
    ids: list[str] = []

    def records(partition: int, partitions: int, start: int):
        if not ids:
            ids.extend(str(a) for a in range(instances))
        return ((TYPENAME, ids[i % instances], 1) for i in range(partition + start * partitions, messages, partitions))

    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--from", dest="start", type=int, default=2)
    parser.add_argument("--to", dest="end", type=int, default=3)
    parser.add_argument("--settle", type=float, default=6.0, help="seconds of steady load before the rescale")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after the rescale returns")
    parser.add_argument("--rounds", type=int, default=20, help="messages per instance (the source outlasts the run)")
    parser.add_argument("--trace", action="store_true", help="print the rate every 0.5 s, the rescale at 0")
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
        asked = time.time()
        before = probe.mean_rate(asked - SPAN_S, asked)
        if not before:
            raise SystemExit(f"WRONG: no rate measured before the rescale (samples: {probe.samples[-5:]})")
        checkpoint = app.rescale(args.end)
        returned = time.time()
        time.sleep(max(0.0, returned + args.after - time.time()))
        probe.stop()
        ended = probe.read_until(returned)
        if probe.samples[-1][1] >= messages:
            raise SystemExit("WRONG: the source ran out before the run ended: raise --rounds")
        # the new layout's own rate, once settled: on a machine with fewer cores than shards it may be
        # below the old one, and "full rate" is then what the new layout sustains, not the old figure
        after = probe.mean_rate(ended - SPAN_S, ended)
        full = FULL * min(before, after)
        back = probe.first_window(returned, full, ended)
        phases = app.info()["last_rescale_phases"]
        if args.trace:
            first = probe.samples[0][0]
            for t in range(int((ended - first) * 2) + 1):
                at = first + t / 2
                print(f"  {at - asked:+5.1f} s: {probe.rate(at):>10,.0f} msgs/s")
        print(
            f"{args.instances:,} instances: {before:,.0f} msgs/s on {args.start} shards; rescale to {args.end} "
            f"from checkpoint {checkpoint} returned after {returned - asked:.2f} s "
            f"({', '.join(f'{k} {v:.2f} s' for k, v in phases.items())}); {after:,.0f} msgs/s on {args.end} "
            f"shards {args.after - SPAN_S:.0f}-{args.after:.0f} s after"
        )
        app.wait(timeout=900)
        _check(app, args.instances, args.rounds)
    finally:
        probe.stop()
        app.stop()
        shutil.rmtree(checkpoints, ignore_errors=True)
    if back is None:
        raise SystemExit(f"WRONG: the rate never came back to {full:,.0f} msgs/s within {args.after:.0f} s")
    print(f"back at {full:,.0f} msgs/s ({FULL:.0%} of the lower of the two) {back - asked:.1f} s after the request")
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
