"""CheckpointStore on memory:// and a local directory: round trips, incremental chains, rescaling,
corruption and fallback, invisibility without a manifest, retention and compaction."""

from __future__ import annotations

import pickle
import random
import tempfile

import pytest

from rayfun.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    RestoredShard,
    ShardPart,
)
from rayfun.checkpoint.state_codec import fold_layers
from rayfun.runtime.partitioning import key_group, shard_ranges
from rayfun.types import IntType, StringType
from tests.support.checkpoints import LAYOUTS, Model, file_codec, restored_state

pytestmark = pytest.mark.timeout(120)

G = 1024


def write_checkpoint(
    store: CheckpointStore,
    cid: int,
    model: Model,
    shards: int,
    parent: int | None,
    full: bool = False,
    extras: dict | None = None,
) -> list[ShardPart]:
    parts = []
    for index, rng in enumerate(shard_ranges(G, shards)):
        kw = (extras or {}).get(index, {})
        parts.append(
            store.write_shard_part(
                cid,
                index,
                rng,
                key_groups=G,
                state=model.deltas(rng, G, full=full or parent is None),
                parent_id=parent,
                full=full,
                **kw,
            )
        )
    store.commit(cid, parts, app_meta={"functions": sorted(LAYOUTS)})
    model.clear_changes()
    return parts


def flip_byte(store: CheckpointStore, rel: str, offset: int = 100) -> None:
    path = store.blobs.abs(rel)
    data = bytearray(store.blobs.fs.cat_file(path))
    data[min(offset, len(data) - 1)] ^= 0xFF
    store.blobs.fs.pipe_file(path, bytes(data))


def test_round_trip_of_every_table_kind(store_url):
    store = CheckpointStore(store_url)
    model = Model(random.Random(10))
    timers = [
        (
            1000 + i,
            i,
            "test/counter",
            f"c{i}",
            f"tok{i}" if i % 2 else "",
            "test/profile",
            f"p{i}",
            IntType.typename if i % 2 else "test.types/blob",
            i if i % 2 else bytes([i, 0, 255]),
        )
        for i in range(20)
    ]
    messages = [
        (
            "test/counter",
            f"c{i}",
            None if i % 3 else ("test/profile", f"p{i}"),
            StringType.typename if i % 2 else "test.types/blob",
            "ä" * i if i % 2 else bytes([i]) * i,
        )
        for i in range(30)
    ]
    egress = [(0, 7, i, "test/out", StringType.typename, f"rec{i}") for i in range(5)] + [
        (0, 7, 5, "test/raw", "x/y", b"\0")
    ]
    meta = {"sources": {"in/0": {"offset": 42, "ts": 1.5}}, "channels": {"1": 7}, "remote_specs": {}}
    part = store.write_shard_part(
        1,
        0,
        (0, G),
        key_groups=G,
        state=model.deltas(full=True),
        timers=timers,
        messages=messages,
        egress=egress,
        meta=meta,
    )
    assert store.latest() is None  # not visible before commit
    manifest = store.commit(1, [part], app_meta={"app": "t"})
    assert store.latest().checkpoint_id == 1 and manifest.app == {"app": "t"}
    restored = store.load_shard(store.latest())
    assert restored_state(restored) == model.state
    assert restored.timers == timers
    assert restored.messages == messages
    assert restored.egress == egress
    assert restored.metas == {0: meta}
    assert restored.layouts == LAYOUTS


def test_empty_shards_write_no_files(store_url):
    store = CheckpointStore(store_url)
    parts = [store.write_shard_part(1, i, r, key_groups=G) for i, r in enumerate(shard_ranges(G, 2))]
    assert all(p.bytes_written == 0 and all(f.path is None for f in p.files.values()) for p in parts)
    store.commit(1, parts)
    restored = store.load_shard(1, (0, G))
    assert restored.state.num_rows == 0 and restored.timers == restored.messages == restored.egress == []
    assert restored.instances("test/counter", [("count", IntType.typename)]) == {}


def test_incremental_chain_with_tombstones_equals_full_snapshot(store_url):
    store = CheckpointStore(store_url, retain=10)
    model = Model(random.Random(11))
    write_checkpoint(store, 1, model, 2, parent=None)
    for cid in range(2, 7):
        model.mutate(80)
        parts = write_checkpoint(store, cid, model, 2, parent=cid - 1)
        assert not any(p.full for p in parts)
        assert restored_state(store.load_shard(cid)) == model.state
    chain = store.latest().state_chain
    assert [f.checkpoint_id for f in chain] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # each delta holds the changed instances only; all are written in memory, so all are Arrow IPC
    base = sum(f.rows for f in chain if f.checkpoint_id == 1)
    assert all(f.rows < base / 4 for f in chain if f.checkpoint_id > 1)
    assert all(f.path.endswith(".arrow") for f in chain), [f.path for f in chain]
    # every retained checkpoint still restores to what it was: compare against a full snapshot of now
    full = CheckpointStore(store_url + "-full")
    write_checkpoint(full, 1, model, 2, parent=None, full=True)
    assert restored_state(full.load_shard(1)) == restored_state(store.load_shard(6))


def test_a_delta_without_changes_writes_nothing(store_url):
    store = CheckpointStore(store_url)
    model = Model(random.Random(12), n=20)
    write_checkpoint(store, 1, model, 1, parent=None)
    parts = write_checkpoint(store, 2, model, 1, parent=1)
    assert "state" not in parts[0].files and parts[0].bytes_written == 0
    assert restored_state(store.load_shard(2)) == model.state


@pytest.mark.parametrize("new_shards", [1, 3, 5])
def test_restore_onto_a_different_shard_count(store_url, new_shards):
    store = CheckpointStore(store_url)
    model = Model(random.Random(13))
    ranges2 = shard_ranges(G, 2)
    timers = {
        i: {
            "timers": [
                (5, j, "test/counter", f"s{i}-{j}", "", "test/counter", "x", IntType.typename, j)
                for j in range(40)
                if ranges2[i][0] <= key_group("test/counter", f"s{i}-{j}", G) < ranges2[i][1]
            ],
            "messages": [
                ("test/counter", f"m{i}-{j}", None, IntType.typename, j)
                for j in range(40)
                if ranges2[i][0] <= key_group("test/counter", f"m{i}-{j}", G) < ranges2[i][1]
            ],
            "egress": [(i, 3, 0, "test/out", IntType.typename, i)],
            "meta": {"shard": i},
        }
        for i in range(2)
    }
    write_checkpoint(store, 1, model, 2, parent=None, extras=timers)
    model.mutate(50)
    write_checkpoint(store, 2, model, 2, parent=1, extras=timers)
    union: dict[str, dict[str, list]] = {ft: {} for ft in LAYOUTS}
    all_timers, all_messages, all_egress = [], [], []
    for rng in shard_ranges(G, new_shards):
        restored = store.load_shard(2, rng)
        for ft, inst in restored_state(restored).items():
            assert not set(inst) & set(union[ft])
            assert all(rng[0] <= key_group(ft, i, G) < rng[1] for i in inst)
            union[ft].update(inst)
        seqs = [t[1] for t in restored.timers]
        assert len(set(seqs)) == len(seqs)  # unique even when merged from several old shards
        assert [t[0] for t in restored.timers] == sorted(t[0] for t in restored.timers)
        all_timers += [t[:1] + t[2:] for t in restored.timers]
        all_messages += restored.messages
        all_egress += restored.egress
        assert set(restored.metas) == {s.index for s in store.manifest(2).shards_overlapping(rng)}
    assert union == model.state
    assert sorted(all_timers) == sorted(t[:1] + t[2:] for x in timers.values() for t in x["timers"])
    assert sorted(all_messages) == sorted(m for x in timers.values() for m in x["messages"])
    assert sorted(all_egress) == [
        (0, 3, 0, "test/out", IntType.typename, 0),
        (1, 3, 0, "test/out", IntType.typename, 1),
    ]


def test_rescaled_job_continues_with_deltas_and_bases(store_url):
    """2 shards -> restore on 3 -> deltas on the old chain -> bases of the new layout prune the old files."""
    store = CheckpointStore(store_url, retain=5)
    model = Model(random.Random(14))
    write_checkpoint(store, 1, model, 2, parent=None)
    model.mutate(40)
    write_checkpoint(store, 2, model, 3, parent=1)  # deltas from 3 new shards on a 2-shard chain
    assert restored_state(store.load_shard(2)) == model.state
    model.mutate(40)
    write_checkpoint(store, 3, model, 3, parent=2, full=True)
    assert [f.checkpoint_id for f in store.latest().state_chain] == [3, 3, 3]
    assert restored_state(store.load_shard(3)) == model.state


@pytest.mark.parametrize("kind", ["state", "timers"])
def test_corrupt_file_is_named_and_recovery_falls_back(store_url, kind):
    store = CheckpointStore(store_url)
    model = Model(random.Random(15))
    extras = {0: {"timers": [(1, 0, "test/counter", "a", "", "test/counter", "b", IntType.typename, 1)]}}
    write_checkpoint(store, 1, model, 1, parent=None, extras=extras)
    before = {ft: dict(inst) for ft, inst in model.state.items()}
    model.mutate(30)
    parts = write_checkpoint(store, 2, model, 1, parent=1, extras=extras)
    bad = parts[0].files[kind].path
    flip_byte(store, bad)
    with pytest.raises(CorruptCheckpointError) as err:
        store.load_shard(2)
    assert err.value.path.endswith(bad) and err.value.reason == "checksum mismatch"
    assert bad in str(err.value) and err.value.checkpoint_id == 2
    restored = store.load_latest_valid()
    assert restored.checkpoint_id == 1 and restored_state(restored) == before
    with pytest.raises(CorruptCheckpointError):
        store.verify(2, full=True)
    store.verify(2)  # sizes still match: only the checksum tells


def test_missing_file_is_named_and_skipped(store_url):
    store = CheckpointStore(store_url)
    model = Model(random.Random(16))
    write_checkpoint(store, 1, model, 2, parent=None)
    model.mutate(30)
    parts = write_checkpoint(store, 2, model, 2, parent=1)
    gone = parts[1].files["state"].path
    store.blobs.fs.rm_file(store.blobs.abs(gone))
    with pytest.raises(CorruptCheckpointError, match="missing") as err:
        store.load_shard(2)
    assert err.value.path.endswith(gone)
    assert store.latest_valid().checkpoint_id == 1
    assert store.load_latest_valid().checkpoint_id == 1
    # a shard whose range does not need the missing file still restores from 2
    assert store.load_shard(2, shard_ranges(G, 2)[0]).checkpoint_id == 2


def test_checkpoint_without_manifest_is_invisible_and_bad_manifest_skipped(store_url):
    store = CheckpointStore(store_url)
    model = Model(random.Random(17), n=20)
    write_checkpoint(store, 1, model, 1, parent=None)
    store.write_shard_part(2, 0, (0, G), key_groups=G, state=model.deltas(), parent_id=1)  # never committed
    assert store.checkpoint_ids() == [1] and store.latest().checkpoint_id == 1
    write_checkpoint(store, 3, model, 1, parent=1)
    flip_byte(CheckpointStore(store_url), store.manifest_path(3), offset=300)
    fresh = CheckpointStore(store_url)  # no cached manifest
    with pytest.raises(CorruptCheckpointError, match="cp-0000000003.json"):
        fresh.manifest(3)
    assert fresh.latest().checkpoint_id == 1
    assert fresh.next_checkpoint_id() == 4
    with pytest.raises(CheckpointError, match="does not exist"):
        fresh.manifest(2)


def test_retention_keeps_chains_and_removes_the_rest(store_url):
    store = CheckpointStore(store_url, retain=2)
    model = Model(random.Random(18))
    write_checkpoint(store, 1, model, 2, parent=None)
    for cid in range(2, 6):
        model.mutate(40)
        write_checkpoint(store, cid, model, 2, parent=cid - 1)
    assert store.checkpoint_ids() == [4, 5]
    # the chain of 5 still reaches back to checkpoint 1: all its files are kept
    needed = {f.path for f in store.manifest(5).files()} | {f.path for f in store.manifest(4).files()}
    on_disk = set(store.blobs.find("data"))
    assert needed <= on_disk
    assert on_disk == needed  # nothing else (checkpoint 2's and 3's timers etc. were empty anyway)
    assert restored_state(CheckpointStore(store_url).load_shard(5)) == model.state
    # a full checkpoint makes the old chain unreferenced once it is out of retention
    write_checkpoint(store, 6, model, 2, parent=5, full=True)
    write_checkpoint(store, 7, model, 2, parent=6)
    assert store.checkpoint_ids() == [6, 7]
    assert {int(p.split("/")[1][3:]) for p in store.blobs.find("data")} == {6}
    assert restored_state(store.load_shard(7)) == model.state


def test_compaction_equals_full_rebuild_and_is_spliced(store_url):
    store = CheckpointStore(store_url, retain=2)
    model = Model(random.Random(19))
    write_checkpoint(store, 1, model, 2, parent=None)
    for cid in range(2, 5):
        model.mutate(60)
        write_checkpoint(store, cid, model, 2, parent=cid - 1)
    expected_at_4 = restored_state(store.load_shard(4))
    result = CheckpointStore(store_url).compact()  # e.g. another process
    assert result.source == 4 and all(f.base for f in result.files)
    assert store.compact() is not None  # a second compaction of the same checkpoint is harmless
    model.mutate(60)
    write_checkpoint(store, 5, model, 2, parent=4)
    m5 = store.manifest(5)
    assert m5.compacted_through == 4
    assert [(f.checkpoint_id, f.base) for f in m5.state_chain] == [(4, True), (4, True), (5, False), (5, False)]
    assert restored_state(store.load_shard(5)) == model.state
    # compaction output (the bases now heading the chain) equals the full rebuild of checkpoint 4
    bases = [f for f in m5.state_chain if f.checkpoint_id == 4]
    compacted = fold_layers([t for t in store.files.read_many(bases, 5).values()])
    assert restored_state(RestoredShard(4, (0, G), G, compacted, dict(LAYOUTS))) == expected_at_4
    # after retention moves on, the pre-compaction deltas disappear
    model.mutate(10)
    write_checkpoint(store, 6, model, 2, parent=5)
    ids = {int(p.split("/")[1][3:]) for p in store.blobs.find("data")}
    assert ids == {5, 6}
    assert restored_state(store.load_shard(6)) == model.state


def test_compaction_of_a_checkpoint_outside_the_lineage_is_ignored(store_url):
    """Recovery fell back from a damaged 3 to 2: a compaction of 3 must not leak into 4."""
    store = CheckpointStore(store_url, retain=5)
    model = Model(random.Random(20))
    write_checkpoint(store, 1, model, 1, parent=None)
    model.mutate(20)
    write_checkpoint(store, 2, model, 1, parent=1)
    at_2 = {ft: dict(v) for ft, v in model.state.items()}
    model.mutate(20)
    write_checkpoint(store, 3, model, 1, parent=2)
    assert store.compact(3).source == 3
    model.state = at_2  # the job rolled back to 2
    model.clear_changes()
    model.mutate(20)
    write_checkpoint(store, 4, model, 1, parent=2)
    assert store.manifest(4).compacted_through is None
    assert restored_state(store.load_shard(4)) == model.state


def test_commit_validates_parts(store_url):
    store = CheckpointStore(store_url)
    r = shard_ranges(G, 2)
    p0 = store.write_shard_part(1, 0, r[0], key_groups=G)
    with pytest.raises(CheckpointError, match="do not cover"):
        store.commit(1, [p0])
    p1 = store.write_shard_part(1, 1, r[1], key_groups=G)
    store.commit(1, [p0, p1])
    with pytest.raises(CheckpointError, match="already committed"):
        store.commit(1, [p0, p1])
    d0 = store.write_shard_part(3, 0, r[0], key_groups=G, parent_id=2)
    d1 = store.write_shard_part(3, 1, r[1], key_groups=G, parent_id=2)
    with pytest.raises(CheckpointError, match="build on checkpoint 2"):
        store.commit(3, [d0, d1])
    d1b = store.write_shard_part(3, 1, r[1], key_groups=G, parent_id=1)
    with pytest.raises(CheckpointError, match="different parents"):
        store.commit(3, [d0, d1b])
    with pytest.raises(CheckpointError, match="JSON"):
        store.write_shard_part(4, 0, r[0], key_groups=G, meta={"pos": object()})
    with pytest.raises(CheckpointError, match="not within"):
        store.write_shard_part(4, 0, (0, G + 1), key_groups=G)


def test_store_parts_and_errors_pickle(store_url):
    store = CheckpointStore(store_url, retain=4)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.retain == 4
    part = store.write_shard_part(1, 0, (0, G), key_groups=G, meta={"a": [1, 2]})
    assert pickle.loads(pickle.dumps(part)) == part
    err = pickle.loads(pickle.dumps(CorruptCheckpointError("/x/y", "missing", checkpoint_id=3)))
    assert (err.path, err.reason, err.checkpoint_id) == ("/x/y", "missing", 3)


def test_a_chain_of_parquet_and_arrow_files_restores_exactly_in_any_order_of_formats(store_url):
    """A shard's files are Arrow IPC (cheap to write), bases and deltas alike; a store with a codec that IPC
    lacks writes Parquet, as rayfun did before. A chain that mixes both (a checkpoint directory written by
    the older rayfun, continued by this one, then by a snappy store again) restores exactly, on every shard
    count, and so does its compaction (Parquet bases)."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    model = Model(rng, n=200)
    stores = {c: CheckpointStore(store_url, retain=20, compression=c) for c in ("snappy", "lz4", "zstd", "none")}
    formats = []
    # a random order of codecs, with snappy (Parquet) and one of the others (Arrow IPC) at least once each
    codecs = [rng.choice(list(stores)) for _ in range(8)]
    spots = rng.sample(range(8), 2)
    codecs[spots[0]] = "snappy"
    if all(c == "snappy" for c in codecs):
        codecs[spots[1]] = rng.choice(["lz4", "zstd", "none"])
    for cid, compression in enumerate(codecs, start=1):
        if cid > 1:
            model.mutate(rng.randrange(1, 60))
        parts = write_checkpoint(stores[compression], cid, model, 2, parent=cid - 1 if cid > 1 else None)
        for part in parts:
            ref = part.files.get("state")
            if ref is None or ref.path is None:
                continue
            arrow = ref.path.endswith(".arrow")
            assert arrow == (compression != "snappy"), (compression, ref.path)
            formats.append(arrow)
        for store in stores.values():  # any store reads what any other wrote
            for shards in (1, 3):
                whole: dict[str, dict] = {ft: {} for ft in model.state}
                for rng_ in shard_ranges(G, shards):
                    for ft, inst in restored_state(store.load_shard(cid, rng_)).items():
                        whole[ft].update(inst)
                assert whole == model.state, (
                    f"checkpoint {cid} on {shards} shards read by a {store.compression} store (seed {seed})"
                )
    assert True in formats and False in formats, f"the chain did not mix the formats (seed {seed})"
    result = stores["lz4"].compact()  # folds the mixed chain into Parquet bases
    assert result is not None and all(f.path is None or f.path.endswith(".parquet") for f in result.files)
    model.mutate(30)
    write_checkpoint(stores["lz4"], 9, model, 2, parent=8)
    assert stores["lz4"].manifest(9).compacted_through == 8
    assert restored_state(stores["snappy"].load_shard(9)) == model.state, f"seed {seed}"


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_a_file_of_the_right_digest_but_not_its_format_is_named_unreadable(store_url, suffix):
    """What a writer bug (or a key holder) could leave: bytes that match the manifest but are no table of
    the format the file's name says, or a table of the other format under that name."""
    from rayfun.checkpoint import CorruptCheckpointError
    from rayfun.checkpoint.manifest import FileRef

    store = CheckpointStore(store_url)
    model = Model(random.Random(3), n=20)
    [arrow] = write_checkpoint(store, 1, model, 1, None)
    model.mutate(10)
    [parquet] = write_checkpoint(CheckpointStore(store_url, compression="snappy"), 2, model, 1, 1)
    other = (arrow if suffix == ".parquet" else parquet).files["state"]  # a real file of the other format
    assert other.path is not None and not other.path.endswith(suffix)
    for data in (b"not a table at all " * 50, store.blobs.get(other.path)):
        rel = f"data/bogus/file.state{suffix}"
        store.blobs.put(rel, data)
        ref = FileRef("state", rel, len(data), store.checksum.of(data), 3, (0, G), 2, 0, False)
        with pytest.raises(CorruptCheckpointError, match="unreadable") as caught:
            store.files.read(ref, 2)
        assert caught.value.path.endswith(rel)


@pytest.mark.parametrize("compression", ["zstd", "none", "snappy"])
def test_other_compression_round_trips_and_unknown_is_refused(store_url, compression):
    model = Model(random.Random(5), n=50)

    def codec(store: CheckpointStore, part: ShardPart) -> str:
        return file_codec(store.blobs.get(part.files["state"].stored_path))

    expected = {"zstd": "ZSTD", "none": "UNCOMPRESSED", "snappy": "SNAPPY"}[compression]
    store = CheckpointStore(store_url, compression=compression)
    [part] = write_checkpoint(store, 1, model, 1, None)
    assert restored_state(store.load_shard(1, (0, G))) == model.state
    assert codec(store, part) == expected
    model.mutate(20)
    [part] = write_checkpoint(store, 2, model, 1, 1)  # a delta: the same codec
    assert restored_state(store.load_shard(2, (0, G))) == model.state
    assert codec(store, part) == expected
    assert part.files["state"].path.endswith(".parquet" if compression == "snappy" else ".arrow")
    lz4 = CheckpointStore(store_url + "-lz4")
    [part] = write_checkpoint(lz4, 1, model, 1, None)
    assert restored_state(lz4.load_shard(1, (0, G))) == model.state and codec(lz4, part).startswith("LZ4")
    with pytest.raises(ValueError, match="compression 'nope'"):
        CheckpointStore(store_url, compression="nope")


def test_egress_rows_keep_shard_epoch_and_position_whatever_their_size():
    """They used to be packed into one integer (shard < 256, position < 2^24, unchecked): a long epoch (say,
    checkpoints failing for a while) overflowed into the epoch bits and its republishing went wrong."""
    from rayfun.checkpoint.records import decode_egress, encode_egress

    rows = [(300, 2**40, 2**30 + k, "test/out", StringType.typename, f"r{k}") for k in range(3)]
    rows += [(0, 1, 0, "test/out", StringType.typename, "first")]
    assert decode_egress(encode_egress(rows)) == sorted(rows)


def test_egress_files_of_the_packed_format_are_read_as_today(tmp_path):
    """Checkpoints written before the egress columns split still restore their unpublished epochs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayfun.checkpoint.records import decode_egress, upgrade_egress

    old = pa.table(
        {
            "seq": pa.array([(2 << 55) | (9 << 24) | 4], pa.int64()),
            "egress_id": ["test/out"],
            "value_typename": [StringType.typename],
            "value": pa.array([StringType.serialize("x")], pa.binary()),
        }
    )
    pq.write_table(old, tmp_path / "old.parquet")
    assert decode_egress(upgrade_egress(pq.read_table(tmp_path / "old.parquet"))) == [
        (2, 9, 4, "test/out", StringType.typename, "x")
    ]


def test_a_keyed_checkpoint_refuses_what_the_key_did_not_sign(tmp_path):
    """SHA-256 catches damage, not someone who can write the bucket: they can change a file and its
    digest in the manifest alike. With a key, digests are HMACs: a change without the key fails its check,
    an unkeyed manifest is refused, and a reader without the key is told to pass one."""
    import hashlib
    import json as _json

    from rayfun.checkpoint import StateDelta, StateLayout

    key = "a secret of sixteen bytes or more"
    url = str(tmp_path / "cp")
    store = CheckpointStore(url, key=key)
    layout = StateLayout.of("test/counter", [("count", IntType.typename)])
    part = store.write_shard_part(1, 0, (0, 8), key_groups=8, state=[StateDelta(layout, {"a": [1]})])
    store.commit(1, [part], key_groups=8)
    assert CheckpointStore(url, key=key).load_shard(1).instances("test/counter") == {"a": [1]}
    from rayfun.checkpoint.errors import CheckpointKeyError

    with pytest.raises(CheckpointKeyError, match="pass checkpoint_key"):
        CheckpointStore(url).manifest(1)

    # someone who can write the bucket swaps the state file and fixes its SHA-256 and the manifest's
    manifest_path = tmp_path / "cp" / "manifests" / "cp-0000000001.json"
    doc = _json.loads(manifest_path.read_text())
    ref = doc["manifest"]["shards"][0]["files"]["state"]
    forged = CheckpointStore(str(tmp_path / "other"))
    other = forged.write_shard_part(1, 0, (0, 8), key_groups=8, state=[StateDelta(layout, {"a": [666]})])
    data = (tmp_path / "other" / other.files["state"].path).read_bytes()
    (tmp_path / "cp" / ref["path"]).write_bytes(data)
    ref["size"], ref["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    for f in doc["manifest"]["state_chain"]:
        if f["path"] == ref["path"]:
            f["size"], f["sha256"] = ref["size"], ref["sha256"]
    unkeyed = {"manifest": doc["manifest"], "sha256": CheckpointStore(url).checksum.of_document(doc["manifest"])}
    manifest_path.write_text(_json.dumps(unkeyed))
    with pytest.raises(CheckpointKeyError, match="not signed with the checkpoint key"):
        CheckpointStore(url, key=key).manifest(1)
    doc["checksum"] = "hmac-sha256"  # claims to be keyed, with a digest made without the key
    doc["sha256"] = unkeyed["sha256"]
    manifest_path.write_text(_json.dumps(doc))
    with pytest.raises(CheckpointKeyError, match="HMAC mismatch"):
        CheckpointStore(url, key=key).manifest(1)
    with pytest.raises(CheckpointKeyError):  # never taken for damage: not skipped, not quarantined
        CheckpointStore(url, key=key).latest_valid(quarantine=True)
    assert (tmp_path / "cp" / "manifests" / "cp-0000000001.json").exists()
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CheckpointStore(url, key="short")


def test_big_tables_go_through_a_staging_file_and_read_back_the_same(store_url, monkeypatch, tmp_path):
    """Past STAGE_ABOVE_BYTES a file is written to a staging file (no whole copy in memory) from state that
    arrives in pieces, in row groups of at most ROW_GROUP_BYTES, hashed from the file and put in place; it
    restores a row group at a time (from a downloaded copy for an object store) like a small one, and no
    staging or downloaded file is left behind, also when the write fails."""
    import pyarrow.parquet as pq

    from rayfun.checkpoint import StateDelta, StateLayout, fileformat, state_codec
    from rayfun.checkpoint import datafiles as store_module

    monkeypatch.setattr(store_module, "STAGE_ABOVE_BYTES", 0)
    monkeypatch.setattr(fileformat, "ROW_GROUP_BYTES", 1024)
    monkeypatch.setattr(state_codec, "PIECE_BYTES", 4096)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()
    store = CheckpointStore(store_url)
    layout = StateLayout.of("test/blob", [("b", "test.types/blob")])
    cells = {f"k{i}": [bytes([i % 256]) * 300] for i in range(50)}
    part = store.write_shard_part(1, 0, (0, 8), key_groups=8, state=[StateDelta(layout, cells)])
    store.commit(1, [part], key_groups=8)
    assert store.load_shard(1).instances("test/blob") == cells
    with store.blobs.fs.open(store.blobs.abs(part.files["state"].path)) as f:
        assert pq.ParquetFile(f).num_row_groups > 1
    assert not list((tmp_path / "staging").iterdir())
    assert not [p for p in store.blobs.find("data") if ".tmp-" in p]

    monkeypatch.setattr(store.files, "put", lambda rel, data: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        store.write_shard_part(2, 0, (0, 8), key_groups=8, parent_id=1, state=[StateDelta(layout, cells)])
    assert not list((tmp_path / "staging").iterdir())
    assert not [p for p in store.blobs.find("data") if ".tmp-" in p]
