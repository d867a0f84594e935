"""Timers, messages and egress records <-> Arrow tables. Written in full at every checkpoint.

Row shapes are the runtime's own (so it needs no adapter):

- timer:   ``(due_ms, seq, sender_typename, sender_id, token, target_typename, target_id, value_typename,
  payload)`` — the field order of ``rayfun.runtime.timers.Timer``;
- message: ``(target_typename, target_id, caller, value_typename, payload)`` with ``caller`` a
  ``(typename, id)`` pair or None — the shard's batch row;
- egress:  ``(shard, epoch, seq, egress_id, value_typename, payload)``: the shard that emitted it, the
  epoch it belongs to and its position there (a republished epoch goes out whole, in order).

Payloads follow the runtime convention (Python values for built-in types, bytes otherwise); on disk they
are the StateFun wire bytes, and decoding gives the runtime convention back.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from ..types import BUILTIN_TYPES, IntType, LongType, decode_payload, encode_payload
from .errors import CheckpointError
from .schema import EGRESS_SCHEMA, MESSAGES_SCHEMA, TIMERS_SCHEMA
from .state_codec import key_groups_mixed

__all__ = [
    "decode_egress",
    "decode_messages",
    "decode_timers",
    "encode_egress",
    "encode_messages",
    "encode_timers",
    "upgrade_egress",
]

Timer = tuple  # (due_ms, seq, sender_typename, sender_id, token, target_typename, target_id, vtype, payload)
MessageRow = tuple  # (target_typename, target_id, caller | None, value_typename, payload)
EgressRow = tuple  # (shard, epoch, seq, egress_id, value_typename, payload)


def _wire(typenames: Sequence[str], payloads: Sequence[Any], what: str) -> list[bytes]:
    """The wire bytes of each payload, row by row (``_wire_column`` vectorizes the common cases). The
    serializer is looked up once per typename rather than through ``encode_payload`` per row (3x faster)."""
    serializers: dict[str, Any] = {}
    out: list[bytes] = []
    append = out.append
    try:
        for t, p in zip(typenames, payloads):
            kind = type(p)
            if kind is bytes:
                append(p)
                continue
            if kind is bytearray or kind is memoryview:
                append(bytes(p))
                continue
            serialize = serializers.get(t)
            if serialize is None:
                builtin = BUILTIN_TYPES.get(t)
                serialize = serializers[t] = (
                    builtin.serialize if builtin is not None else functools.partial(encode_payload, t)
                )
            append(serialize(p))
    except (TypeError, struct.error) as exc:
        raise CheckpointError(f"a {what} holds a payload that cannot be stored: {exc}") from None
    return out


def _fixed_int_layout(t: Any, dtype: str) -> tuple[int, np.dtype]:
    """(tag byte, little-endian dtype) of a built-in integer type, whose wire bytes are the tag and the
    value, or nothing for 0 (proto3 leaves a default out): taken from the type's own serializer."""
    one = t.serialize(1)
    layout = np.dtype(dtype)
    if len(one) != 1 + layout.itemsize:
        raise AssertionError(f"{t.typename}: unexpected wire layout {one!r}")
    return one[0], layout


#: Built-in integer types whose payload columns are encoded and decoded as arrays, not row by row.
_FIXED_INTS: dict[str, tuple[int, np.dtype]] = {
    IntType.typename: _fixed_int_layout(IntType, "<i4"),
    LongType.typename: _fixed_int_layout(LongType, "<i8"),
}


def _fixed_ints_wire(layout: tuple[int, np.dtype], payloads: list) -> pa.Array | None:
    """The wire bytes of ``payloads`` (Python ints) as a binary array built in numpy; None if one does not
    fit the type (the row-by-row path then says which)."""
    tag, dtype = layout
    try:
        values = np.array(payloads)
    except (OverflowError, ValueError):
        return None
    info = np.iinfo(dtype)
    if values.dtype.kind != "i" or values.ndim != 1 or values.min() < info.min or values.max() > info.max:
        return None
    n, width = len(values), 1 + dtype.itemsize
    records = np.empty((n, width), np.uint8)
    records[:, 0] = tag
    records[:, 1:] = values.astype(dtype).view(np.uint8).reshape(n, width - 1)
    nonzero = values != 0
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(nonzero * width, dtype=np.int32, out=offsets[1:])
    data = records if nonzero.all() else records[nonzero]
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _wire_column(typenames: list[str], payloads: list, what: str) -> pa.Array:
    """The wire bytes of each payload, as a binary array. Runs for every unprocessed message at every
    checkpoint (tens of thousands a shard under load): payloads that are all bytes go to Arrow as they
    are, and a column of one built-in integer type is encoded in numpy (~0.5 us a row less)."""
    n = len(payloads)
    if n and typenames.count(typenames[0]) == n:
        kinds = set(map(type, payloads))
        if kinds == {bytes}:
            return pa.array(payloads, pa.binary())
        layout = _FIXED_INTS.get(typenames[0])
        if kinds == {int} and layout is not None:
            column = _fixed_ints_wire(layout, payloads)
            if column is not None:
                return column
    return pa.array(_wire(typenames, payloads, what), pa.binary())


def _fixed_ints_read(layout: tuple[int, np.dtype], values: pa.Array) -> list[int] | None:
    """The ints a binary column of one built-in integer type holds, decoded in numpy; None unless every
    value is in the layout ``_fixed_ints_wire`` writes (anything else is decoded row by row)."""
    tag, dtype = layout
    width = 1 + dtype.itemsize
    n = len(values)
    if values.null_count or values.type != pa.binary():  # large_binary has 64-bit offsets: row by row
        return None
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, values.offset * 4)
    lengths = np.diff(offsets)
    present = lengths != 0
    if not np.all(lengths[present] == width):
        return None
    starts = offsets[:-1][present]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    if not np.all(data[starts] == tag):
        return None
    out = np.zeros(n, np.int64)
    out[present] = data[starts[:, None] + np.arange(1, width)].view(dtype).reshape(-1)
    return out.tolist()


def _payloads(values: pa.ChunkedArray, typenames: list) -> list[Any]:
    """The runtime payloads of a table's ``value`` column; ``typenames``: its ``value_typename`` column,
    as the caller's rows already hold it."""
    n = len(typenames)
    layout = _FIXED_INTS.get(typenames[0]) if n and typenames.count(typenames[0]) == n else None
    if layout is not None:
        decoded = _fixed_ints_read(layout, values.combine_chunks())
        if decoded is not None:
            return decoded
    return list(map(decode_payload, typenames, values.to_pylist()))


_COLUMN = [itemgetter(i) for i in range(9)]


def _string_list(column: pa.ChunkedArray) -> list:
    """A string column as a list; one value repeated (a typename, usually) is not converted row by row."""
    if column.null_count == 0:
        distinct = column.unique()
        if len(distinct) == 1:
            return [distinct[0].as_py()] * len(column)
    return column.to_pylist()


def _strings(column: list[str]) -> pa.Array:
    """A string column; one value repeated (a typename, usually) is built without reading every row."""
    if column and column.count(column[0]) == len(column):
        return pa.repeat(pa.scalar(column[0], pa.string()), len(column))
    return pa.array(column, pa.string())


def _columns(rows: list[tuple], width: int) -> list[list]:
    """The ``width`` columns of ``rows``. A C-level ``map`` per column: ``zip(*rows)`` builds an iterator
    per row for the garbage collector to walk (0.95 us a row of 50k, against ~0.1)."""
    return [list(map(_COLUMN[i], rows)) for i in range(width)]


def _key_groups(typenames: list, ids: list, key_groups: int | None) -> pa.Array:
    return pa.nulls(len(ids), pa.int32()) if key_groups is None else key_groups_mixed(typenames, ids, key_groups)


def encode_timers(timers: Iterable[Timer], key_groups: int | None) -> pa.Table:
    """Timer rows -> ``TIMERS_SCHEMA`` (key group of the sender; None: left null for readers)."""
    rows = list(timers)
    if not rows:
        return TIMERS_SCHEMA.empty_table()
    due, seq, stype, sid, token, ttype, tid, vtype, payload = _columns(rows, 9)
    return pa.Table.from_arrays(
        [
            _key_groups(stype, sid, key_groups),
            pa.array(due, pa.int64()),
            pa.array(seq, pa.int64()),
            _strings(stype),
            pa.array(sid, pa.string()),
            pa.array(token, pa.string()),
            _strings(ttype),
            pa.array(tid, pa.string()),
            _strings(vtype),
            _wire_column(vtype, payload, "timer"),
        ],
        schema=TIMERS_SCHEMA,
    )


def decode_timers(table: pa.Table) -> list[Timer]:
    """``TIMERS_SCHEMA`` -> timer rows in (due_ms, seq) order."""
    if table.num_rows == 0:
        return []
    table = table.sort_by([("due_ms", "ascending"), ("seq", "ascending")])
    cols = [
        table[c].to_pylist()
        for c in (
            "due_ms",
            "seq",
            "sender_typename",
            "sender_id",
            "token",
            "target_typename",
            "target_id",
            "value_typename",
        )
    ]
    return list(zip(*cols, _payloads(table["value"], cols[-1])))


def encode_messages(messages: Iterable[MessageRow], key_groups: int | None) -> pa.Table:
    """Message rows -> ``MESSAGES_SCHEMA`` (key group of the target; None: left null for readers), in the
    given order."""
    rows = list(messages)
    if not rows:
        return MESSAGES_SCHEMA.empty_table()
    ttype, tid, caller, vtype, payload = _columns(rows, 5)
    if caller.count(None) == len(caller):  # from sources: no caller
        caller_type = caller_id = pa.nulls(len(caller), pa.string())
    else:
        caller_type = pa.array([c[0] if c else None for c in caller], pa.string())
        caller_id = pa.array([c[1] if c else None for c in caller], pa.string())
    return pa.Table.from_arrays(
        [
            _key_groups(ttype, tid, key_groups),
            _strings(ttype),
            pa.array(tid, pa.string()),
            caller_type,
            caller_id,
            _strings(vtype),
            _wire_column(vtype, payload, "message"),
        ],
        schema=MESSAGES_SCHEMA,
    )


def decode_messages(table: pa.Table) -> list[MessageRow]:
    """``MESSAGES_SCHEMA`` -> message rows, in stored order."""
    if table.num_rows == 0:
        return []
    n = table.num_rows
    if table["caller_typename"].null_count == n:  # from sources: no caller
        callers: list = [None] * n
    else:
        ctype, cid = table["caller_typename"].to_pylist(), table["caller_id"].to_pylist()
        callers = [None if t is None else (t, i) for t, i in zip(ctype, cid)]
    vtypes = _string_list(table["value_typename"])
    return list(
        zip(
            _string_list(table["target_typename"]),
            table["target_id"].to_pylist(),
            callers,
            vtypes,
            _payloads(table["value"], vtypes),
        )
    )


def encode_egress(records: Iterable[EgressRow]) -> pa.Table:
    """Egress rows -> ``EGRESS_SCHEMA``."""
    rows = list(records)
    if not rows:
        return EGRESS_SCHEMA.empty_table()
    shard, epoch, seq, egress_id, vtype, payload = _columns(rows, 6)
    return pa.Table.from_arrays(
        [
            pa.array(shard, pa.int32()),
            pa.array(epoch, pa.int64()),
            pa.array(seq, pa.int64()),
            _strings(egress_id),
            _strings(vtype),
            _wire_column(vtype, payload, "egress record"),
        ],
        schema=EGRESS_SCHEMA,
    )


def upgrade_egress(table: pa.Table) -> pa.Table:
    """An egress table of rayfun 0.1's checkpoints, which packed shard, epoch and position into ``seq``
    (``shard << 55 | epoch << 24 | position``), in today's columns; other tables as they are."""
    if "shard" in table.column_names or "seq" not in table.column_names:
        return table
    seq = table["seq"].to_pylist()
    shard = pa.array([s >> 55 for s in seq], pa.int32())
    epoch = pa.array([(s >> 24) & ((1 << 31) - 1) for s in seq], pa.int64())
    position = pa.array([s & ((1 << 24) - 1) for s in seq], pa.int64())
    rest = table.drop_columns(["seq"])
    return pa.Table.from_arrays([shard, epoch, position, *rest.columns], ["shard", "epoch", "seq", *rest.column_names])


def decode_egress(table: pa.Table) -> list[EgressRow]:
    """``EGRESS_SCHEMA`` -> egress rows in ``(shard, epoch, seq)`` order."""
    if table.num_rows == 0:
        return []
    table = table.sort_by([("shard", "ascending"), ("epoch", "ascending"), ("seq", "ascending")])
    vtypes = table["value_typename"].to_pylist()
    return list(
        zip(
            table["shard"].to_pylist(),
            table["epoch"].to_pylist(),
            table["seq"].to_pylist(),
            table["egress_id"].to_pylist(),
            vtypes,
            _payloads(table["value"], vtypes),
        )
    )
