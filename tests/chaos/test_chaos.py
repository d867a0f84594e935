"""Chaos: kill shard actors at random moments during a seeded run with cyclic messaging, fan-out, delayed
messages with cancellation, expiring state and egress; the end state and the egress multiset must equal
what the workload implies, exactly: nothing lost, nothing twice. Set RAYFUN_CHAOS_SEED to reproduce."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
import ray

import rayfun
from connectors.memory import MemorySource

from .workload import EGRESS, FN, Commands, Generator, build_functions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SEED = int(os.environ.get("RAYFUN_CHAOS_SEED", "20261125"))


def check_outcome(app, gen: Generator) -> None:
    app.wait(timeout=120)
    egress = Counter(app.egress(EGRESS))
    assert egress == gen.egress, f"egress differs: missing {gen.egress - egress}, extra {egress - gen.egress}"
    wrong = {}
    for i, expected in enumerate(gen.expected):
        state = app.state(FN, str(i), wait=False)
        if state.get("count", 0) != expected or "scratch" in state:
            wrong[i] = (state, expected)
    assert not wrong, f"{len(wrong)} instances differ, e.g. {list(wrong.items())[:3]}"


def kill_shards_meanwhile(app, rng: random.Random, kills: int, stop: threading.Event) -> list[int]:
    killed = []
    for _ in range(kills):
        if stop.wait(rng.uniform(0.8, 2.0)):
            break
        shards = ray.get(app._coordinator.shard_handles.remote())
        victim = rng.randrange(len(shards))
        ray.kill(shards[victim], no_restart=True)
        killed.append(victim)
        deadline = time.monotonic() + 30  # let the recovery finish before the next kill
        while app.info()["recoveries"] < len(killed) and time.monotonic() < deadline:
            time.sleep(0.1)
    return killed


def test_shard_kills_lose_nothing_and_duplicate_nothing(ray_session, tmp_path):
    rng = random.Random(SEED)
    gen = Generator(SEED, instances=300, messages=4000)
    source = MemorySource(gen.records, partitions=3, id="chaos/commands", batch_size=50, value_type=Commands)
    app = rayfun.start(build_functions(), shards=3, ingresses=[source], checkpoint_dir=str(tmp_path / "cp"),
                       checkpoint_interval=0.3)
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_shards_meanwhile(app, rng, 3, stop)))
    try:
        killer.start()
        app.wait(timeout=180)
        stop.set()
        killer.join(timeout=60)
        assert killed, "the run ended before any shard was killed: make the workload longer"
        info = app.info()
        print(f"killed shards {killed}; {info}")
        assert info["recoveries"] >= len(killed)
        check_outcome(app, gen)
    finally:
        stop.set()
        app.stop()


def test_same_workload_without_failures_is_exact(ray_session, tmp_path):
    """The reference run: also proves the checker itself is sound (it would flag a broken run)."""
    gen = Generator(SEED, instances=300, messages=1500)
    source = MemorySource(gen.records, partitions=3, id="chaos/commands", batch_size=50, value_type=Commands)
    app = rayfun.start(build_functions(), shards=3, ingresses=[source], checkpoint_dir=str(tmp_path / "cp"),
                       checkpoint_interval=0.3)
    try:
        check_outcome(app, gen)
        gen.egress["never-emitted"] += 1
        with pytest.raises(AssertionError, match="egress differs"):
            check_outcome(app, gen)
    finally:
        app.stop()
