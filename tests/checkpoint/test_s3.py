"""The same store against S3 for real: s3fs talking to a moto_server on a free loopback port."""

from __future__ import annotations

import random
import uuid

import pytest

from rayfun.checkpoint import CheckpointStore, CorruptCheckpointError, read_state
from rayfun.runtime.partitioning import shard_ranges
from rayfun.types import IntType
from tests.support.checkpoints import Model, restored_state

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

G = 1024


def _checkpoint(store, cid, model, shards, parent, full=False):
    parts = [
        store.write_shard_part(
            cid,
            i,
            r,
            key_groups=G,
            parent_id=parent,
            full=full,
            state=model.deltas(r, G, full=full or parent is None),
            timers=[(cid, i, "test/counter", "t", "", "test/counter", "u", IntType.typename, i)] if i == 0 else (),
        )
        for i, r in enumerate(shard_ranges(G, shards))
    ]
    store.commit(cid, parts)
    model.clear_changes()


def test_s3_incremental_rescale_corruption_compaction_retention(moto_s3):
    url = f"s3://rayfun-test/{uuid.uuid4().hex}/checkpoints"
    store = CheckpointStore(url, retain=2, storage_options=moto_s3)
    model = Model(random.Random(30), n=200)
    _checkpoint(store, 1, model, 2, None)
    for cid in (2, 3):
        model.mutate(40)
        _checkpoint(store, cid, model, 2, cid - 1)
    # another process (a shard actor) sees the same thing, and restores onto 3 shards
    reader = CheckpointStore(url, storage_options=moto_s3)
    assert reader.latest().checkpoint_id == 3
    union = {}
    for r in shard_ranges(G, 3):
        for ft, inst in restored_state(reader.load_shard(3, r)).items():
            union.setdefault(ft, {}).update(inst)
    assert union == model.state
    # compaction, then a commit splices it; retention removes what no retained manifest needs
    assert reader.compact().source == 3
    model.mutate(40)
    _checkpoint(store, 4, model, 2, 3)
    assert store.manifest(4).compacted_through == 3
    model.mutate(40)
    _checkpoint(store, 5, model, 2, 4)
    assert store.checkpoint_ids() == [4, 5]
    assert {int(p.split("/")[1][3:]) for p in store.blobs.find("data")} == {4, 5}
    assert restored_state(CheckpointStore(url, storage_options=moto_s3).load_shard(5)) == model.state
    # a flipped byte in the newest checkpoint: named, and recovery falls back to 4
    state_file = store.manifest(5).shards[0].files["state"].path
    data = bytearray(store.blobs.fs.cat_file(store.blobs.abs(state_file)))
    data[50] ^= 0xFF
    store.blobs.fs.pipe_file(store.blobs.abs(state_file), bytes(data))
    fresh = CheckpointStore(url, storage_options=moto_s3)
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch") as err:
        fresh.load_shard(5)
    assert err.value.path.endswith(state_file)
    assert fresh.load_latest_valid().checkpoint_id == 4
    table = read_state(url, storage_options=moto_s3)
    assert table.schema.metadata[b"rayfun.checkpoint_id"] == b"4"


def test_s3_checkpoint_without_manifest_is_invisible(moto_s3):
    url = f"s3://rayfun-test/{uuid.uuid4().hex}"
    store = CheckpointStore(url, storage_options=moto_s3)
    model = Model(random.Random(31), n=10)
    store.write_shard_part(1, 0, (0, G), key_groups=G, state=model.deltas(full=True))
    assert store.latest() is None and store.checkpoint_ids() == []
    _checkpoint(store, 2, model, 1, None)
    assert store.latest().checkpoint_id == 2


def test_storage_that_goes_silent_fails_the_call_in_bounded_time_and_the_next_works(moto_s3, monkeypatch):
    """S3 that answers nothing (a partition: no reset, no answer). botocore asks for ``100-continue`` on a
    PUT and aiohttp waits for it without a timer: without rayfun's bound the PUT waited forever. With it,
    each kind of call fails with a clear StorageTimeout, and once S3 answers again the next call works."""
    import time

    from rayfun import storage
    from rayfun.checkpoint.blobs import BlobStore
    from tests.support.proxy import TcpProxy
    from tests.support.servers import MOTO_BUCKET, s3_options

    moto_port = int(moto_s3["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])
    proxy = TcpProxy(moto_port)
    try:
        blobs = BlobStore(f"s3://{MOTO_BUCKET}/silent-{uuid.uuid4().hex[:8]}", s3_options(proxy.port))
        # The first call also builds the client's session and TLS context: on a loaded 2-core machine that
        # alone took over 1.5 s once, so the tight bound applies to the outage only.
        blobs.put_atomic("manifests/a.json", b"{}")
        monkeypatch.setattr(storage, "STORAGE_CALL_TIMEOUT_S", 1.5)
        proxy.blackhole()
        for call in (
            lambda: blobs.put_atomic("manifests/b.json", b"{}"),
            lambda: blobs.put("data/c.arrow", b"x" * 5000),
            lambda: blobs.get("manifests/a.json"),
            lambda: blobs.ls("manifests"),
        ):
            began = time.monotonic()
            with pytest.raises(storage.StorageTimeout, match="storage did not answer within 2 s"):
                call()
            assert time.monotonic() - began < 6.0
        proxy.up()
        monkeypatch.setattr(
            storage, "STORAGE_CALL_TIMEOUT_S", 30.0
        )  # the default bound again for the calls after the heal
        blobs.put_atomic("manifests/b.json", b"{}")
        assert blobs.get("manifests/b.json") == b"{}"
        assert sorted(p.rsplit("/", 1)[1] for p in blobs.ls("manifests")) == ["a.json", "b.json"]
    finally:
        proxy.close()


def test_a_filesystem_method_without_a_timeout_is_called_unbounded_and_said_so(caplog):
    """An async filesystem whose own sync method takes no ``timeout`` (not fsspec's wrapper) still works."""
    import logging

    from fsspec.asyn import AsyncFileSystem

    from rayfun import storage

    class Plain(AsyncFileSystem):
        protocol = "plain-test"

        def cat_file(self, path):
            return b"data of " + path.encode()

    fs = Plain()
    with caplog.at_level(logging.WARNING, logger="rayfun"):
        assert storage.call_bounded(fs, "cat_file", "x") == b"data of x"
        assert storage.call_bounded(fs, "cat_file", "y") == b"data of y"
    assert caplog.text.count("Plain.cat_file takes no timeout") == 1
