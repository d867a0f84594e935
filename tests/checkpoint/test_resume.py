"""Restarting an application from its checkpoint directory: on another shard count (rescaling), after a
corrupt newest checkpoint (fall back to the previous one), and reading state offline with read_state."""

from __future__ import annotations

import glob
import os
import time

import pytest

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec
from tests.support.checkpoints import file_codec

pytestmark = pytest.mark.timeout(240)


def counters() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("resume/counter", specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + message.as_int()

    return functions


def test_resume_on_another_shard_count_and_read_state(ray_session, tmp_path):
    url = str(tmp_path / "cp")
    app = rayfun.start(
        counters(), shards=3, checkpoint_dir=url, checkpoint_interval=None, checkpoint_compression="zstd"
    )  # restored below by shards that do not know it
    app.send_many([("resume/counter", f"c{i}", i) for i in range(500)])
    app.wait()
    app.checkpoint()
    app.send_many([("resume/counter", f"c{i}", 1000) for i in range(0, 500, 2)])  # a delta on top
    app.wait()
    app.checkpoint()
    app.stop()

    for shards in (2, 4):  # fewer and more shards than wrote the checkpoint
        app = rayfun.start(counters(), shards=shards, checkpoint_dir=url, checkpoint_interval=None)
        try:
            for i in (0, 1, 7, 250, 499):
                assert app.state("resume/counter", f"c{i}") == {"count": i + (1000 if i % 2 == 0 else 0)}
            app.send("resume/counter", "c1", 5)  # it keeps running from there
            assert app.state("resume/counter", "c1") == {"count": 6}
        finally:
            app.stop()

    written = sorted((tmp_path / "cp").rglob("*.state.*"))
    codecs = {file_codec(p.read_bytes()) for p in written}
    assert written and codecs == {"ZSTD"}, codecs
    table = rayfun.read_state(url)
    assert table.num_rows == 500
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["c7"]["function_type"] == "resume/counter" and rows["c7"]["state_name"] == "count"
    assert rows["c7"]["value_int"] == 7 and rows["c8"]["value_int"] == 1008


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(ray_session, tmp_path):
    url = str(tmp_path / "cp")
    app = rayfun.start(counters(), shards=2, checkpoint_dir=url, checkpoint_interval=None)
    app.send_many([("resume/counter", f"k{i}", 1) for i in range(100)])
    app.wait()
    first = app.checkpoint()
    app.send_many([("resume/counter", f"k{i}", 1) for i in range(100)])
    app.wait()
    second = app.checkpoint()
    app.stop()
    assert second == first + 1

    damaged = sorted(glob.glob(os.path.join(url, "**", f"cp-{second:010d}", "*state*"), recursive=True))
    assert damaged, f"no state file of checkpoint {second} under {url}"
    with open(damaged[0], "r+b") as f:
        f.seek(max(0, os.path.getsize(damaged[0]) // 2))
        f.write(b"\xde\xad\xbe\xef")

    app = rayfun.start(counters(), shards=2, checkpoint_dir=url, checkpoint_interval=None)
    try:
        assert app.info()["last_checkpoint"] == first
        assert all(app.state("resume/counter", f"k{i}") == {"count": 1} for i in range(0, 100, 9))
    finally:
        app.stop()


def test_a_warm_standby_shard_replaces_a_dead_one(ray_session, tmp_path):
    import ray

    app = rayfun.start(counters(), shards=2, checkpoint_dir=str(tmp_path / "cp"), checkpoint_interval=None)
    try:
        app.send_many([("resume/counter", f"k{i}", 1) for i in range(50)])
        app.wait()
        app.checkpoint()
        deadline = time.monotonic() + 30  # it is started a few seconds in
        while app.info()["standby"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        standby = app.info()["standby"]
        assert standby is not None
        ray.kill(ray.get(app._coordinator.shard_handles.remote())[1], no_restart=True)
        app.send_many([("resume/counter", f"k{i}", 1) for i in range(50)])  # re-sent after the rollback
        app.wait(timeout=60)
        assert app.info()["recoveries"] == 1
        assert ray.get(app._coordinator.shard_handles.remote())[1]._actor_id.hex() == standby
        assert all(app.state("resume/counter", f"k{i}") == {"count": 2} for i in range(50))
    finally:
        app.stop()
    plain = rayfun.start(counters(), shards=1, checkpoint_dir=str(tmp_path / "cp2"), standby=False)
    try:
        assert plain.info()["standby"] is None
    finally:
        plain.stop()


def test_a_keyed_application_resumes_with_its_key_only(ray_session, tmp_path):
    """checkpoint_key reaches every shard: the checkpoints it writes resume with the key, read_state needs
    it, and a start without it is told why instead of starting empty."""
    url = str(tmp_path / "cp")
    key = "the operators' secret, 32 bytes."
    app = rayfun.start(counters(), shards=2, checkpoint_dir=url, checkpoint_interval=None, checkpoint_key=key)
    try:
        app.send_many([("resume/counter", f"c{i}", i) for i in range(20)])
        app.wait()
        app.checkpoint()
    finally:
        app.stop()
    # the same, as one value (what the keywords are a shorthand for)
    app = rayfun.start(counters(), shards=3, checkpoint=rayfun.CheckpointConfig(dir=url, interval=None, key=key))
    try:
        assert app.state("resume/counter", "c7") == {"count": 7}
    finally:
        app.stop()
    from rayfun.checkpoint.errors import CheckpointKeyError

    assert rayfun.read_state(url, key=key).num_rows == 20
    with pytest.raises(CheckpointKeyError, match="pass checkpoint_key"):
        rayfun.read_state(url)
    with pytest.raises(Exception, match="pass checkpoint_key"):
        rayfun.start(counters(), shards=2, checkpoint_dir=url, checkpoint_interval=None)
    assert os.listdir(os.path.join(url, "manifests")) and not os.path.exists(os.path.join(url, "damaged"))


def test_checkpoint_config_is_checked_before_anything_starts(tmp_path, monkeypatch):
    """Bad checkpoint settings are refused at start, naming the cause, before Ray or an actor starts."""
    from rayfun import CheckpointConfig

    with pytest.raises(ValueError, match="interval must be > 0"):
        CheckpointConfig(dir="x", interval=0)
    with pytest.raises(ValueError, match="retain must be >= 1"):
        CheckpointConfig(dir="x", retain=0)
    with pytest.raises(TypeError, match=r"not both.*checkpoint_dir|checkpoint_dir.*not both"):
        rayfun.start(counters(), checkpoint=CheckpointConfig(dir="a"), checkpoint_dir="b")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        rayfun.start(counters(), checkpoint=CheckpointConfig(dir="a", key="short"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYFUN_CHECKPOINT_KEY", "k" * 16)
    resolved = CheckpointConfig(dir="cp").resolved()
    assert resolved.dir == str(tmp_path / "cp") and resolved.key == "k" * 16
    assert CheckpointConfig(dir="s3://b/p").resolved().dir == "s3://b/p"
