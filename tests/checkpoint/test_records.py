"""Messages, timers and egress records <-> Arrow: the vectorized columns (one built-in integer type, all
bytes, one repeated typename) must write exactly the bytes the row-by-row path writes, and read back the
rows that went in, whatever mix of types, values and callers a checkpoint holds."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pytest

from rayfun.checkpoint.errors import CheckpointError
from rayfun.checkpoint.records import (
    decode_egress,
    decode_messages,
    decode_timers,
    encode_egress,
    encode_messages,
    encode_timers,
)
from rayfun.types import encode_payload

INT, LONG = "io.statefun.types/int", "io.statefun.types/long"
EDGES = {
    INT: [0, 1, -1, 127, 128, 2**31 - 1, -(2**31)],
    LONG: [0, 1, -1, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)],
}


def _payload(rng: random.Random, typename: str):
    if typename in EDGES:
        return rng.choice(EDGES[typename]) if rng.random() < 0.3 else rng.randint(-1000, 1000)
    if typename == "io.statefun.types/string":
        return rng.choice(["", "x", "é", "a" * 40])
    if typename == "io.statefun.types/bool":
        return rng.random() < 0.5
    if typename == "io.statefun.types/double":
        return rng.choice([0.0, -1.5, 1e300])
    return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))


def _messages(rng: random.Random, n: int, typenames: list[str], callers: bool) -> list[tuple]:
    rows = []
    for i in range(n):
        vtype = rng.choice(typenames)
        caller = ("ex/caller", str(rng.randrange(5))) if callers and rng.random() < 0.5 else None
        rows.append((rng.choice(["ex/a", "ex/b"]) if callers else "ex/a", str(i), caller, vtype, _payload(rng, vtype)))
    return rows


@pytest.mark.parametrize(
    "typenames, callers",
    [
        ([INT], False),  # the numpy path, zeros included
        ([LONG], True),
        (["ex/custom"], False),  # all bytes
        ([INT, LONG, "io.statefun.types/string", "io.statefun.types/bool", "ex/custom"], True),  # row by row
        (["io.statefun.types/double"], False),
    ],
)
def test_message_columns_hold_the_wire_bytes_and_read_back_the_same_rows(typenames, callers):
    seed = int(os.environ.get("RAYFUN_TEST_SEED", random.randrange(1 << 30)))
    print(f"RAYFUN_TEST_SEED={seed}")
    rng = random.Random(seed)
    for n in (1, 2, 7, 300):
        rows = _messages(rng, n, typenames, callers)
        table = encode_messages(rows, None)
        assert table["value"].to_pylist() == [encode_payload(r[3], r[4]) for r in rows]
        assert decode_messages(table) == rows
        # a slice starts its value column at an offset: the numpy read must honour it
        assert decode_messages(table.slice(1)) == rows[1:]
        # and several chunks (a file read back in row groups) read the same as one
        assert decode_messages(pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)])) == rows


def test_an_integer_column_with_a_value_out_of_range_or_of_another_kind_is_refused_by_name():
    base = [("ex/a", "1", None, INT, 5)]
    for bad in (2**31, -(2**31) - 1, 1.5, 2**70):
        with pytest.raises(CheckpointError, match="message holds a payload that cannot be stored"):
            encode_messages([*base, ("ex/a", "2", None, INT, bad)], None)
    # a bool is an int to struct, as before: stored as 1
    assert decode_messages(encode_messages([*base, ("ex/a", "2", None, INT, True)], None))[1][4] == 1


def test_a_value_another_writer_encoded_differently_is_read_row_by_row():
    """An IntWrapper with a field rayfun does not write is valid protobuf the numpy reader does not expect."""
    rows = [("ex/a", "1", None, INT, 5), ("ex/a", "2", None, INT, 0)]
    table = encode_messages(rows, None)
    odd = pa.array([b"\x0d\x07\x00\x00\x00\x10\x01", b""], pa.binary())  # sfixed32 7, then field 2
    table = table.set_column(table.schema.get_field_index("value"), table.schema.field("value"), odd)
    assert [r[4] for r in decode_messages(table)] == [7, 0]


def test_timers_and_egress_records_round_trip_through_the_same_columns():
    seed = int(os.environ.get("RAYFUN_TEST_SEED", random.randrange(1 << 30)))
    print(f"RAYFUN_TEST_SEED={seed}")
    rng = random.Random(seed)
    timers = [
        (1000 + i, i, "ex/a", str(i % 3), f"t{i}", "ex/b", str(i), INT, rng.choice(EDGES[INT])) for i in range(50)
    ]
    assert decode_timers(encode_timers(timers, None)) == timers
    egress = [(0, 3, i, "ex/out", LONG, rng.choice(EDGES[LONG])) for i in range(50)]
    egress += [(1, 3, i, "ex/other", "ex/custom", b"\x00" * i) for i in range(5)]
    assert decode_egress(encode_egress(egress)) == egress


def test_the_numpy_reader_honours_an_array_that_starts_at_an_offset():
    from rayfun.checkpoint.records import _FIXED_INTS, _fixed_ints_read

    values = encode_messages([("ex/a", str(i), None, INT, v) for i, v in enumerate(EDGES[INT])], None)["value"]
    column = values.combine_chunks().slice(2)
    assert column.offset == 2
    assert _fixed_ints_read(_FIXED_INTS[INT], column) == EDGES[INT][2:]


def test_a_large_binary_value_column_is_read_row_by_row():
    """A file another writer made may hold the values as large_binary (64-bit offsets)."""
    rows = [("ex/a", str(i), None, LONG, v) for i, v in enumerate(EDGES[LONG])]
    table = encode_messages(rows, None)
    i = table.schema.get_field_index("value")
    table = table.set_column(i, pa.field("value", pa.large_binary()), table["value"].cast(pa.large_binary()))
    assert decode_messages(table) == rows
