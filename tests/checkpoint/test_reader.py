"""read_state: the newest checkpoint's full state as a pyarrow Table a pandas / DuckDB user can query."""

from __future__ import annotations

import json
import random

import pyarrow.compute as pc
import pytest

from rayfun.checkpoint import CheckpointError, CheckpointStore, StateDelta, StateLayout, read_state
from rayfun.checkpoint.reader import READ_STATE_SCHEMA
from rayfun.runtime.partitioning import key_group
from rayfun.types import BUILTIN_TYPES, DoubleType, IntType, StringType, make_json_type, simple_type
from tests.support.checkpoints import LAYOUTS, Model

pytestmark = pytest.mark.timeout(60)

G = 1024


def test_read_state_columns_and_values(store_url):
    store = CheckpointStore(store_url)
    model = Model(random.Random(40), n=50)
    store.commit(1, [store.write_shard_part(1, 0, (0, G), key_groups=G, state=model.deltas(full=True))])
    model.mutate(30)
    store.commit(2, [store.write_shard_part(2, 0, (0, G), key_groups=G, state=model.deltas(), parent_id=1)])
    table = read_state(store_url)
    assert table.schema.remove_metadata() == READ_STATE_SCHEMA
    assert table.schema.metadata[b"rayfun.checkpoint_id"] == b"2"
    rows = table.to_pylist()
    expected = {
        (ft, id, name): cells[i]
        for ft, inst in model.state.items()
        for id, cells in inst.items()
        for i, name in enumerate(LAYOUTS[ft].names)
        if cells[i] is not None
    }
    assert len(rows) == len(expected)
    keys = [(r["function_type"], r["id"], r["state_name"]) for r in rows]
    assert keys == sorted(keys)
    for r in rows:
        v = expected[(r["function_type"], r["id"], r["state_name"])]
        assert r["key_group"] == key_group(r["function_type"], r["id"], G)  # computed: shards leave it null
        tn = r["value_typename"]
        if tn in BUILTIN_TYPES:
            typed = next(r[c] for c in ("value_int", "value_float", "value_str", "value_bool") if r[c] is not None)
            assert typed == v
            assert r["value"] == BUILTIN_TYPES[tn].serialize(v)
        else:
            assert r["value"] == v
    only = read_state(store_url, function_types=["test/counter"])
    assert set(only["function_type"].to_pylist()) == {"test/counter"}


def test_read_state_decodes_given_types_as_json(store_url):
    store = CheckpointStore(store_url)
    j = make_json_type("test.types/order")
    point = simple_type(
        "test.types/point", lambda p: f"{p[0]},{p[1]}".encode(), lambda b: tuple(int(x) for x in b.decode().split(","))
    )
    layout = StateLayout.of(
        "test/shop", [("order", j.typename), ("at", point.typename), ("total", DoubleType.typename)]
    )
    inst = {
        "a": [j.serializer().serialize({"items": [1, 2], "who": "ä"}), point.serializer().serialize((3, 4)), 9.5],
        "b": [None, None, 1.0],
    }
    store.commit(1, [store.write_shard_part(1, 0, (0, G), key_groups=G, state=[StateDelta(layout, inst)])])
    table = read_state(store_url, types=[j, point])
    by = {(r["id"], r["state_name"]): r for r in table.to_pylist()}
    assert json.loads(by[("a", "order")]["value_json"]) == {"items": [1, 2], "who": "ä"}
    assert json.loads(by[("a", "at")]["value_json"]) == [3, 4]
    assert by[("a", "total")]["value_float"] == 9.5 and by[("a", "total")]["value_json"] is None
    bare = read_state(store_url, types=[j.typename])  # a bare typename is read as UTF-8 JSON text
    assert bare.filter(pc.equal(bare["state_name"], "order"))["value_json"].to_pylist() == [
        '{"items": [1, 2], "who": "ä"}'
    ]
    assert read_state(store_url)["value_json"].null_count == table.num_rows  # nothing decoded unasked


def test_read_state_falls_back_and_reports_absence(store_url):
    with pytest.raises(CheckpointError, match="no complete"):
        read_state(store_url)
    store = CheckpointStore(store_url)
    layout = StateLayout.of("test/c", [("n", IntType.typename)])
    store.commit(1, [store.write_shard_part(1, 0, (0, G), key_groups=G, state=[StateDelta(layout, {"x": [1]})])])
    part = store.write_shard_part(2, 0, (0, G), key_groups=G, parent_id=1, state=[StateDelta(layout, {"x": [2]})])
    store.commit(2, [part])
    path = store.blobs.abs(part.files["state"].path)
    data = bytearray(store.blobs.fs.cat_file(path))
    data[20] ^= 0x55
    store.blobs.fs.pipe_file(path, bytes(data))
    table = read_state(store_url)
    assert table.schema.metadata[b"rayfun.checkpoint_id"] == b"1" and table["value_int"].to_pylist() == [1]
    assert read_state(store_url, checkpoint_id=1)["value_str"].to_pylist() == [None]
    assert StringType.typename not in table["value_typename"].to_pylist()
