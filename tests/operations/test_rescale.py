"""Live rescale: the shard count changes while sources and the driver feed the application, with cycles,
timers, expiring state and exactly-once egress; the result must be exact (nothing lost, nothing twice)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest

import rayfun
from rayfun.connectors.memory import MemorySource
from tests.chaos.workload import EGRESS, FN, Commands, Generator, build_functions
from tests.support.progress import wait_until_processed

SEED = int(os.environ.get("RAYFUN_TEST_SEED", random.randrange(1_000_000)))
INSTANCES = 200


@pytest.mark.slow
def test_rescale_under_load_is_exact(ray_session, tmp_path):
    print(f"seed {SEED} (RAYFUN_TEST_SEED={SEED} replays it)")
    from_source = Generator(SEED, instances=INSTANCES, messages=6000)
    from_driver = Generator(SEED + 1, instances=INSTANCES, messages=1500)
    source = MemorySource(from_source.records, partitions=3, id="test/commands", batch_size=20, value_type=Commands)
    app = rayfun.start(
        build_functions(),
        shards=2,
        ingresses=[source],
        checkpoint_dir=str(tmp_path / "cp"),
        checkpoint_interval=0.2,
        name=f"rescale-{SEED}",
    )
    operator = rayfun.connect(f"rescale-{SEED}")  # another driver's view: it rescales, `app` goes on sending
    try:
        records = from_driver.records
        chunks = [records[i : i + 50] for i in range(0, len(records), 50)]  # 30 chunks: 10 per rescale
        layouts, kept = [], []  # kept: restores that kept the live state so far, over the live shards
        for step, shards in enumerate([4, 1, 3]):
            for chunk in chunks[step * 10 : step * 10 + 5]:
                app.send_many(chunk, value_type=Commands)
            if step == 0:  # early in the source (by progress: a fixed 0.3 s read all of it on a fast machine)
                wait_until_processed(app, 300, timeout=30)
            else:
                time.sleep(0.3)
            before = not all(m["sources_exhausted"] for m in app.shard_metrics())  # the source is still being read
            # in the middle of the work (the sources are far from their end); the second time by the attached
            # driver, so that `app` sends rows routed for the old shard count, which the coordinator re-routes
            (operator if step == 1 else app).rescale(shards)
            layouts.append((shards, before, app.info()["shards"], len(app.shard_metrics())))
            kept.append(sum(status["restores_kept"] for status in app._statuses()))
            for chunk in chunks[step * 10 + 5 : step * 10 + 10]:
                app.send_many(chunk, value_type=Commands)
        assert len(chunks) == 30
        app.wait(timeout=240)
        for shards, _, reported, statuses in layouts:
            assert reported == shards and statuses == shards
        # the first rescale comes 300 messages in, far from the source's end; on a slow machine the later ones may
        # come after the source is read (the driver's sends and the cascades are still under way then)
        assert layouts[0][1], "the source was read to its end before the first rescale: nothing was under way"
        assert app.info()["rescales"] == 3
        # 2 -> 4: both shards held from before the checkpoint, so both kept their live state (no recovery)
        assert kept[0] == 2, f"restores that kept the live state after each rescale: {kept}"
        expected = [a + b for a, b in zip(from_source.expected, from_driver.expected)]
        wrong = {
            i: (app.state(FN, str(i), wait=False).get("count", 0), want)
            for i, want in enumerate(expected)
            if app.state(FN, str(i), wait=False).get("count", 0) != want
        }
        assert not wrong, f"seed {SEED}: instances with a wrong count (got, want): {dict(list(wrong.items())[:10])}"
        egress = Counter(app.egress(EGRESS))
        want = from_source.egress + from_driver.egress
        assert egress == want, f"seed {SEED}: egress differs: missing {want - egress}, extra {egress - want}"
        assert app.info()["recoveries"] == 0
    finally:
        app.stop()


def test_rescale_refuses_what_it_cannot_do(ray_session, tmp_path):
    functions = build_functions()
    app = rayfun.start(functions, shards=2, checkpoint_dir=None)
    try:
        with pytest.raises(rayfun.RayfunError, match="needs checkpoints"):
            app.rescale(3)
        with pytest.raises(ValueError, match="shards must be"):
            app.rescale(0)
        app.send(FN, "1", [["inc"]], value_type=Commands)
        assert app.state(FN, "1")["count"] == 1  # and the application runs on as it was
    finally:
        app.stop()


@pytest.mark.slow
def test_a_shard_killed_while_rescaling_loses_nothing(ray_session, tmp_path):
    """A failure that races the rescale: a shard is killed at a random moment around the request. The
    rescale either completes or fails with OperationFailed (and the application recovers as it was);
    either way the result is exact."""
    import threading

    import ray

    rng = random.Random(SEED)
    print(f"seed {SEED} (RAYFUN_TEST_SEED={SEED} replays it)")
    gen = Generator(SEED, instances=INSTANCES, messages=4000)
    source = MemorySource(gen.records, partitions=3, id="test/commands", batch_size=20, value_type=Commands)
    app = rayfun.start(
        build_functions(), shards=2, ingresses=[source], checkpoint_dir=str(tmp_path / "cp"), checkpoint_interval=0.2
    )
    try:
        time.sleep(1.0)
        victims = ray.get(app._coordinator.shard_handles.remote())
        victim = rng.choice(victims)
        delay = rng.uniform(0.0, 0.12)  # the rescale of this small state takes about 0.05-0.3 s
        killer = threading.Timer(delay, lambda: ray.kill(victim))
        killer.start()
        try:
            app.rescale(3)
            outcome = "rescaled"
        except rayfun.RayfunError as exc:  # the checkpoint it needs failed: it goes on with 2 shards
            outcome = f"refused: {str(exc).strip().splitlines()[-1]}"
        killer.join()
        info = app.info()
        print(
            f"killed a shard {delay:.2f} s after the request; {outcome}; rescale {info.get('last_rescale_s')} s, {info['recoveries']} recoveries"
        )
        app.wait(timeout=240)
        assert app.info()["shards"] == len(app.shard_metrics()) in (2, 3)
        got = [app.state(FN, str(i), wait=False).get("count", 0) for i in range(INSTANCES)]
        wrong = {i: (g, w) for i, (g, w) in enumerate(zip(got, gen.expected)) if g != w}
        assert not wrong, f"seed {SEED}: wrong counts (got, want): {dict(list(wrong.items())[:10])}"
        egress = Counter(app.egress(EGRESS))
        assert egress == gen.egress, f"seed {SEED}: missing {gen.egress - egress}, extra {egress - gen.egress}"
    finally:
        app.stop()
