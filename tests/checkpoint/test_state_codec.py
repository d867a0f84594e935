"""State rows <-> runtime cells: exact round trips, key groups, folding deltas, type drift."""

from __future__ import annotations

import random
from datetime import timedelta

import pyarrow as pa
import pytest

from rayfun.checkpoint import CheckpointError, StateDelta, StateLayout, decode_instances, encode_state
from rayfun.checkpoint.schema import STATE_SCHEMA
from rayfun.checkpoint.state_codec import (
    ENCODE_CHUNK,
    filter_key_groups,
    fold_layers,
    key_groups_mixed,
    key_groups_of,
    with_key_groups,
)
from rayfun.functions import ValueSpec
from rayfun.runtime.partitioning import key_group
from rayfun.runtime.runners.state import FunctionState
from rayfun.types import IntType, LongType, StringType, make_json_type
from tests.support.checkpoints import COUNTER, LAYOUTS, PROFILE, random_cells, random_state

pytestmark = pytest.mark.timeout(60)


def _roundtrip(state: dict[str, dict[str, list]]) -> dict[str, dict[str, list]]:
    table = encode_state([StateDelta(LAYOUTS[ft], inst) for ft, inst in state.items()], 1024)
    assert table.schema == STATE_SCHEMA
    folded = fold_layers([table])
    return {
        ft: decode_instances(folded.filter(pa.compute.equal(folded["function_type"], ft)), LAYOUTS[ft]) for ft in state
    }


def test_key_groups_match_the_runtime():
    rng = random.Random(1)
    ids = [f"id-{rng.getrandbits(40)}" for _ in range(500)] + ["", "ä€😀", "a/b", " "]
    for typename in ("test/counter", "ns/ünï", "a/b"):
        for g in (1, 7, 128, 1024, 32768):
            got = key_groups_of(typename, ids, g).to_pylist()
            assert got == [key_group(typename, i, g) for i in ids]
    types = [rng.choice(["a/x", "b/y"]) for _ in ids]
    assert key_groups_mixed(types, ids, 1024).to_pylist() == [key_group(t, i, 1024) for t, i in zip(types, ids)]


def test_round_trip_every_builtin_bytes_and_expiring_cells():
    state = random_state(random.Random(2), n=500)
    assert _roundtrip(state) == state


def test_rows_carry_key_groups_and_skip_unset_values():
    table = encode_state([StateDelta(COUNTER, {"a": [1], "b": [2]})], 64)
    rows = table.to_pylist()
    assert [(r["id"], r["value_int"], r["key_group"]) for r in rows] == [
        ("a", 1, key_group(COUNTER.function_type, "a", 64)),
        ("b", 2, key_group(COUNTER.function_type, "b", 64)),
    ]
    prof = encode_state([StateDelta(PROFILE, {"p": ["n", None, None, None, None, None, 0, 0, 0, 0, 0, 0]})], 64)
    assert prof.num_rows == 1 and prof["state_name"].to_pylist() == ["name"]
    assert prof["expires_at_ms"].to_pylist() == [None]


def test_key_groups_left_null_are_computed_when_a_file_is_split():
    """Shards leave key groups to readers; a range that splits the file computes them, exactly."""
    instances = {f"c{i}": [i] for i in range(300)}
    lazy = encode_state([StateDelta(COUNTER, instances, deleted=["gone"])], None)
    assert lazy["key_group"].null_count == lazy.num_rows == 301
    assert with_key_groups(lazy, 64).equals(encode_state([StateDelta(COUNTER, instances, deleted=["gone"])], 64))
    # the file lies within the range: taken as it is, nothing computed
    assert filter_key_groups(lazy, (0, 64), 64, file_range=(0, 64)) is lazy
    # the range splits it (rescaling): exactly the rows of the range
    half = filter_key_groups(lazy, (0, 32), 64, file_range=(0, 64))
    expected = {i for i in [*instances, "gone"] if key_group(COUNTER.function_type, i, 64) < 32}
    assert set(half["id"].to_pylist()) == expected and 0 < len(expected) < 301
    assert all(kg < 32 for kg in half["key_group"].to_pylist())


def test_fold_applies_deltas_and_tombstones():
    base = {"a": [1], "b": [2], "c": [3]}
    d1 = StateDelta(COUNTER, {"a": [10], "d": [4]}, deleted=["b"])
    d2 = StateDelta(COUNTER, {"b": [20]}, deleted=["c", "never-existed"])
    layers = [encode_state([StateDelta(COUNTER, base)], 1024), encode_state([d1], 1024), encode_state([d2], 1024)]
    assert decode_instances(fold_layers(layers), COUNTER) == {"a": [10], "b": [20], "d": [4]}


def test_fold_superseded_instance_loses_all_old_values():
    """A changed instance replaces every row it had: a value deleted since the base must not come back."""
    cells = ["n", 1.5, 7, 0.5, True, b"x", 0, 99, 0, 0, 5, 0]
    later = ["m", None, None, None, None, None, 0, 0, 0, 0, 0, 0]
    layers = [
        encode_state([StateDelta(PROFILE, {"p": cells})], 1024),
        encode_state([StateDelta(PROFILE, {"p": later})], 1024),
    ]
    assert decode_instances(fold_layers(layers), PROFILE) == {"p": later}


def test_from_function_state_of_the_runtime():
    fs = FunctionState("test/counter", [ValueSpec("count", IntType)])
    fs.put("a", [1], maybe_empty=False)
    fs.put("b", [2], maybe_empty=False)
    fs.changed.clear()
    fs.put("a", [5], maybe_empty=False)
    fs.put("b", [None])  # became empty: dropped, a tombstone
    delta = StateDelta.from_function_state(fs)
    assert dict(delta.instances) == {"a": 5, "b": None} and delta.values  # a single-cell type: values; None: gone
    assert decode_instances(
        fold_layers([encode_state([StateDelta(COUNTER, {"a": [1], "b": [2]})], None), encode_state([delta], None)]),
        COUNTER,
    ) == {"a": [5]}
    full = StateDelta.from_function_state(fs, full=True)
    assert dict(full.instances) == {"a": 5} and full.values and not full.deleted


def test_layout_from_value_specs_and_json():
    specs = [ValueSpec("a", IntType), ValueSpec("b", StringType, expire_after_call=timedelta(seconds=2))]
    layout = StateLayout.of("x/y", specs)
    assert layout.expiring and layout.width == 4 and layout.empty_cells() == [None, None, 0, 0]
    assert StateLayout.from_json("x/y", layout.to_json()) == layout


def test_wire_bytes_in_builtin_cells_are_normalized():
    """A remote function's payload may arrive as wire bytes: it is stored as the typed value."""
    table = encode_state([StateDelta(COUNTER, {"a": [IntType.serialize(42)], "b": [7]})], 1024)
    assert sorted(table["value_int"].to_pylist()) == [7, 42]


def test_bad_cells_raise_clear_errors():
    with pytest.raises(CheckpointError, match="test/counter.*1 cells.*expects 2"):
        encode_state(
            [StateDelta(StateLayout.of("test/counter", [("a", IntType.typename, "after_call", 5)]), {"x": [1]})], 1024
        )
    with pytest.raises(CheckpointError, match="state 'count' of test/counter"):
        encode_state([StateDelta(COUNTER, {"x": [object()]})], 1024)


def test_type_drift_on_restore():
    table = fold_layers([encode_state([StateDelta(COUNTER, {"a": [3]})], 1024)])
    # int -> long: same column, value kept
    assert decode_instances(table, StateLayout.of("test/counter", [("count", LongType.typename)])) == {"a": [3]}
    # int -> a user type: handed over as the wire bytes
    j = make_json_type("test.types/j")
    got = decode_instances(table, StateLayout.of("test/counter", [("count", j.typename)]))
    assert got == {"a": [IntType.serialize(3)]}
    # int -> string: not convertible
    with pytest.raises(CheckpointError, match="stored as io.statefun.types/int"):
        decode_instances(table, StateLayout.of("test/counter", [("count", StringType.typename)]))
    # a state the function no longer declares is dropped (as StateFun does)
    assert decode_instances(table, StateLayout.of("test/counter", [("other", IntType.typename)])) == {}


def test_an_instance_without_values_is_a_tombstone():
    layers = [
        encode_state([StateDelta(COUNTER, {"a": [1], "b": [2]})], 1024),
        encode_state([StateDelta(COUNTER, {"a": [None], "b": [3]})], 1024),
    ]
    assert layers[1]["deleted"].to_pylist() == [False, True]
    assert decode_instances(fold_layers(layers), COUNTER) == {"b": [3]}
    empty = ["x", None, None, None, None, None, 0, 0, 0, 0, 0, 0]
    cells = [None] * 6 + [0] * 6
    table = encode_state([StateDelta(PROFILE, {"p": cells, "q": empty})], 1024)
    assert table.filter(table["deleted"])["id"].to_pylist() == ["p"]


def _by_type(folded: pa.Table, layout: StateLayout) -> dict[str, list]:
    return decode_instances(folded.filter(pa.compute.equal(folded["function_type"], layout.function_type)), layout)


def test_chunked_encoding_lines_up_ids_values_and_tombstones_across_chunks():
    """Deltas are converted a chunk at a time: every id keeps its own cells, tombstones included."""
    rng = random.Random(7)
    n = 3 * ENCODE_CHUNK + 17
    base = {f"i{k}": random_cells(PROFILE, rng) for k in range(n)}
    delta = {id: None if rng.random() < 0.1 else random_cells(PROFILE, rng) for id in rng.sample(list(base), n // 2)}
    folded = fold_layers(
        [encode_state([StateDelta(PROFILE, base)], None), encode_state([StateDelta(PROFILE, delta)], None)]
    )
    expected = {id: cells for id, cells in {**base, **delta}.items() if cells is not None}
    assert decode_instances(folded, PROFILE) == expected


def test_single_cell_changes_given_as_values_encode_like_cells():
    """The runtime records changes of single-cell types as the values themselves (None: gone)."""
    rng = random.Random(8)
    cells = {
        f"c{k}": None if rng.random() < 0.1 else [rng.randint(-(2**31), 2**31 - 1)] for k in range(2 * ENCODE_CHUNK + 5)
    }
    values = {id: None if c is None else c[0] for id, c in cells.items()}
    as_cells = encode_state([StateDelta(COUNTER, cells)], 1024)
    as_values = encode_state([StateDelta(COUNTER, values, values=True)], 1024)
    assert as_values.sort_by("id").equals(as_cells.sort_by("id"))
    assert as_values["deleted"].to_pylist().count(True) == sum(c is None for c in cells.values())
    with pytest.raises(ValueError, match="single-cell"):
        StateDelta(PROFILE, {}, values=True)


def test_function_state_records_values_of_single_cell_types_and_hands_changes_over():
    fs = FunctionState("test/counter", [ValueSpec("count", IntType)])
    fs.put("a", [1], maybe_empty=False)
    fs.put("b", [None])
    taken = fs.take_changes()
    assert taken == {"a": 1, "b": None} and fs.changed == {}
    fs.put("a", [2], maybe_empty=False)
    assert taken == {"a": 1, "b": None} and fs.changed == {"a": 2}  # later changes go to a fresh dict
    two = FunctionState("x/y", [ValueSpec("p", IntType), ValueSpec("q", IntType)])
    two.put("k", [1, None])
    assert two.changed == {"k": [1, None]}


def test_fold_keeps_instances_of_different_types_with_the_same_id():
    profile = random_cells(PROFILE, random.Random(9))
    layers = [
        encode_state([StateDelta(COUNTER, {"x": [1], "y": [5]}), StateDelta(PROFILE, {"x": profile})], None),
        encode_state([StateDelta(COUNTER, {"x": [2], "y": None})], None),
    ]
    folded = fold_layers(layers)
    assert _by_type(folded, COUNTER) == {"x": [2]}
    assert _by_type(folded, PROFILE) == {"x": profile}
