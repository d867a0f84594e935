"""Chaos: kill shard actors at random moments during a seeded run with cyclic messaging, fan-out, delayed
messages with cancellation, expiring state and egress; the end state and the egress multiset must equal
what the workload implies, exactly: nothing lost, nothing twice. Set RAYFUN_CHAOS_SEED to reproduce."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter

import pytest
import ray

import rayfun
from rayfun.connectors.memory import MemorySource
from tests.chaos.workload import EGRESS, FN, TALLY, Commands, Generator, build_functions, let_scratch_expire
from tests.support.progress import processed, wait_until_processed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SEED = int(os.environ.get("RAYFUN_CHAOS_SEED", "20261125"))


def check_outcome(app, gen: Generator, tally: bool = False) -> None:
    app.wait(timeout=120)
    let_scratch_expire()
    egress = Counter(app.egress(EGRESS))
    assert egress == gen.egress, f"egress differs: missing {gen.egress - egress}, extra {egress - gen.egress}"
    wrong = {}
    for i, expected in enumerate(gen.expected):
        state = app.state(FN, str(i), wait=False)
        if tally:
            state["tally"] = app.state(TALLY, str(i), wait=False).get("total", 0)
        if state.get("count", 0) != expected or "scratch" in state or state.get("tally", expected) != expected:
            wrong[i] = (state, expected)
    assert not wrong, f"{len(wrong)} instances differ, e.g. {list(wrong.items())[:3]}"


def kill_shards_meanwhile(app, rng: random.Random, kills: int, stop: threading.Event, every: int = 0) -> list[int]:
    """Kill ``kills`` shards while the work goes on, each once ``every`` more messages were processed since
    the last recovery (by progress, not time: a 3x faster machine read a whole workload before a kill timed
    for the slower one), plus up to 0.2 s at random."""
    killed = []
    for _ in range(kills):
        wait_until_processed(app, processed(app) + every, stop=stop)
        if stop.wait(rng.uniform(0.0, 0.2)):
            break
        shards = ray.get(app._coordinator.shard_handles.remote())
        victim = rng.randrange(len(shards))
        ray.kill(shards[victim], no_restart=True)
        killed.append(victim)
        deadline = time.monotonic() + 30  # let the recovery finish before the next kill
        while app.info()["recoveries"] < len(killed) and time.monotonic() < deadline:
            time.sleep(0.1)
    return killed


def run_with_shard_kills(
    checkpoint_dir: str,
    storage_options: dict | None = None,
    kills: int = 3,
    batch_size: int = 50,
    gen: Generator | None = None,
    tally: bool = False,
) -> None:
    rng = random.Random(SEED)
    gen = gen or Generator(SEED, instances=300, messages=15000)
    source = MemorySource(gen.records, partitions=3, id="chaos/commands", batch_size=batch_size, value_type=Commands)
    app = rayfun.start(
        build_functions(tally),
        shards=3,
        ingresses=[source],
        checkpoint_dir=checkpoint_dir,
        checkpoint_interval=0.3,
        storage_options=storage_options,
    )
    stop = threading.Event()
    killed: list[int] = []
    every = len(gen.records) // 10  # three kills take a third of the work or so: most of it comes after
    killer = threading.Thread(target=lambda: killed.extend(kill_shards_meanwhile(app, rng, kills, stop, every)))
    try:
        killer.start()
        app.wait(timeout=180)
        stop.set()
        killer.join(timeout=60)
        assert killed, "the run ended before any shard was killed: make the workload longer"
        info = app.info()
        print(f"killed shards {killed}; {info}")
        assert info["recoveries"] >= len(killed)
        check_outcome(app, gen, tally)
    finally:
        stop.set()
        app.stop()


def test_shard_kills_lose_nothing_and_duplicate_nothing(ray_session, tmp_path):
    run_with_shard_kills(str(tmp_path / "cp"))


def test_shard_kills_with_a_slot_runner_function(ray_session, tmp_path):
    """Every increment is tallied by a single-int function (the slot runner, which checks its value once
    the function returns and keeps its changes for checkpoints itself): with shards killed meanwhile, each
    tally ends equal to its interpreter's count, as the generator computed it."""
    from rayfun.runtime.runners import ColumnState, EmbeddedFunction, FunctionState
    from rayfun.testing import _Shard

    functions = build_functions(tally=True)
    shard = _Shard(functions, 0, on_error="raise")
    held = [type(EmbeddedFunction(spec, shard).state) for spec in functions]  # tally first
    assert held == [ColumnState, FunctionState]  # the slot runner's state by column
    run_with_shard_kills(str(tmp_path / "cp"), tally=True)


def test_shard_kills_with_big_batches_split_into_inline_calls(ray_session, tmp_path):
    """Source batches so big that each shard's batch to a peer goes in several calls (each small enough for
    Ray to pass inline, see outbox.py): kills between and during such calls lose and repeat nothing."""
    from rayfun.connectors.memory import to_row
    from rayfun.constants import DELIVERY_INLINE_BYTES, DELIVERY_MAX_CALLS
    from rayfun.runtime.batchcodec import encode_rows

    batch = 12000
    gen = Generator(SEED, instances=300, messages=40000)
    # a third of a source batch stays on its shard: what goes to one peer must need a few calls, not one
    to_peer = len(encode_rows([to_row(r, Commands) for r in gen.records[: batch // 3]]))
    assert DELIVERY_INLINE_BYTES < to_peer < DELIVERY_MAX_CALLS * DELIVERY_INLINE_BYTES, to_peer
    run_with_shard_kills(str(tmp_path / "cp"), batch_size=batch, gen=gen)


def test_shard_kills_with_checkpoints_on_s3(ray_session, moto_s3):
    """The same, with checkpoints on S3 (moto_server on loopback, reached through s3fs as a user would)."""
    run_with_shard_kills(f"s3://rayfun-test/chaos-{SEED}", storage_options=moto_s3, kills=2)


def test_same_workload_without_failures_is_exact(ray_session, tmp_path):
    """The reference run: also proves the checker itself is sound (it would flag a broken run)."""
    gen = Generator(SEED, instances=300, messages=1500)
    source = MemorySource(gen.records, partitions=3, id="chaos/commands", batch_size=50, value_type=Commands)
    app = rayfun.start(
        build_functions(), shards=3, ingresses=[source], checkpoint_dir=str(tmp_path / "cp"), checkpoint_interval=0.3
    )
    try:
        check_outcome(app, gen)
        gen.egress["never-emitted"] += 1
        with pytest.raises(AssertionError, match="egress differs"):
            check_outcome(app, gen)
    finally:
        app.stop()


def test_driver_and_coordinator_kills_resume_from_the_checkpoint_dir(ray_session, tmp_path):
    """A driver program is killed (SIGKILL: its coordinator and shards go with it); the next driver's
    coordinator is killed with ray.kill; a third driver resumes from the checkpoint directory and finishes.
    State and the file egress must equal what the workload implies."""
    import json
    import signal
    import subprocess
    import sys

    from tests.chaos.dir_sink import read_all

    rng = random.Random(SEED)
    instances, messages = 300, 6000
    gen = Generator(SEED, instances=instances, messages=messages)
    address = ray_session.get_runtime_context().gcs_address
    work = str(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def launch():
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.driver", address, work, str(SEED), str(instances), str(messages)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def newest_checkpoint() -> int:
        manifests = os.path.join(work, "cp", "manifests")
        names = os.listdir(manifests) if os.path.isdir(manifests) else []
        return max((int(m.group(1)) for m in map(re.compile(r"cp-(\d+)\.json$").search, names) if m), default=0)

    def wait_for_checkpoints(past: int, proc) -> None:
        """Until a checkpoint newer than ``past`` is committed by ``proc``'s application (a count of files
        would not do: retention deletes manifests, and the killed driver's coordinator may commit one more
        before Ray stops it)."""
        deadline = time.monotonic() + 60
        coordinator = os.path.join(work, f"coordinator-{proc.pid}")
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(coordinator) and newest_checkpoint() > past:
                return
            time.sleep(0.05)

    # 1: kill the whole driver process
    first = launch()
    wait_for_checkpoints(1, first)
    time.sleep(rng.uniform(0.2, 1.0))
    assert first.poll() is None, "the first driver finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    # 2: kill the coordinator of the next driver (the driver then fails on its next call)
    second = launch()
    wait_for_checkpoints(newest_checkpoint(), second)
    time.sleep(rng.uniform(0.2, 1.0))
    if second.poll() is None:
        name = open(os.path.join(work, f"coordinator-{second.pid}")).read()
        ray.kill(ray.get_actor(name, namespace="rayfun"))
    try:
        second.wait(timeout=60)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait(timeout=30)

    # 3: runs to the end
    if not os.path.exists(os.path.join(work, "state.json")):
        third = launch()
        assert third.wait(timeout=300) == 0, "the resuming driver failed"

    state = json.load(open(os.path.join(work, "state.json")))
    wrong = {
        i: (state[str(i)], e)
        for i, e in enumerate(gen.expected)
        if state[str(i)].get("count", 0) != e or "scratch" in state[str(i)]
    }
    assert not wrong, f"{len(wrong)} instances differ, e.g. {list(wrong.items())[:3]}"
    egress = Counter(read_all(os.path.join(work, "egress")))
    assert egress == gen.egress, f"egress differs: missing {gen.egress - egress}, extra {egress - gen.egress}"
