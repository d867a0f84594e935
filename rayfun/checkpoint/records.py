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
from typing import Any

import pyarrow as pa

from ..types import BUILTIN_TYPES, decode_payload, encode_payload
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
    """The wire bytes of each payload. Runs for every unprocessed message at every checkpoint, so the
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


def _payloads(table: pa.Table) -> list[Any]:
    return list(map(decode_payload, table["value_typename"].to_pylist(), table["value"].to_pylist()))


def _key_groups(typenames: list, ids: list, key_groups: int | None) -> pa.Array:
    return pa.nulls(len(ids), pa.int32()) if key_groups is None else key_groups_mixed(typenames, ids, key_groups)


def encode_timers(timers: Iterable[Timer], key_groups: int | None) -> pa.Table:
    """Timer rows -> ``TIMERS_SCHEMA`` (key group of the sender; None: left null for readers)."""
    rows = list(timers)
    if not rows:
        return TIMERS_SCHEMA.empty_table()
    due, seq, stype, sid, token, ttype, tid, vtype, payload = (list(c) for c in zip(*rows))
    return pa.Table.from_arrays(
        [
            _key_groups(stype, sid, key_groups),
            pa.array(due, pa.int64()),
            pa.array(seq, pa.int64()),
            pa.array(stype, pa.string()),
            pa.array(sid, pa.string()),
            pa.array(token, pa.string()),
            pa.array(ttype, pa.string()),
            pa.array(tid, pa.string()),
            pa.array(vtype, pa.string()),
            pa.array(_wire(vtype, payload, "timer"), pa.binary()),
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
    return list(zip(*cols, _payloads(table)))


def encode_messages(messages: Iterable[MessageRow], key_groups: int | None) -> pa.Table:
    """Message rows -> ``MESSAGES_SCHEMA`` (key group of the target; None: left null for readers), in the
    given order."""
    rows = list(messages)
    if not rows:
        return MESSAGES_SCHEMA.empty_table()
    ttype, tid, caller, vtype, payload = (list(c) for c in zip(*rows))
    return pa.Table.from_arrays(
        [
            _key_groups(ttype, tid, key_groups),
            pa.array(ttype, pa.string()),
            pa.array(tid, pa.string()),
            pa.array([c[0] if c else None for c in caller], pa.string()),
            pa.array([c[1] if c else None for c in caller], pa.string()),
            pa.array(vtype, pa.string()),
            pa.array(_wire(vtype, payload, "message"), pa.binary()),
        ],
        schema=MESSAGES_SCHEMA,
    )


def decode_messages(table: pa.Table) -> list[MessageRow]:
    """``MESSAGES_SCHEMA`` -> message rows, in stored order."""
    if table.num_rows == 0:
        return []
    ctype, cid = table["caller_typename"].to_pylist(), table["caller_id"].to_pylist()
    callers = [None if t is None else (t, i) for t, i in zip(ctype, cid)]
    return list(
        zip(
            table["target_typename"].to_pylist(),
            table["target_id"].to_pylist(),
            callers,
            table["value_typename"].to_pylist(),
            _payloads(table),
        )
    )


def encode_egress(records: Iterable[EgressRow]) -> pa.Table:
    """Egress rows -> ``EGRESS_SCHEMA``."""
    rows = list(records)
    if not rows:
        return EGRESS_SCHEMA.empty_table()
    shard, epoch, seq, egress_id, vtype, payload = (list(c) for c in zip(*rows))
    return pa.Table.from_arrays(
        [
            pa.array(shard, pa.int32()),
            pa.array(epoch, pa.int64()),
            pa.array(seq, pa.int64()),
            pa.array(egress_id, pa.string()),
            pa.array(vtype, pa.string()),
            pa.array(_wire(vtype, payload, "egress record"), pa.binary()),
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
    return list(
        zip(
            table["shard"].to_pylist(),
            table["epoch"].to_pylist(),
            table["seq"].to_pylist(),
            table["egress_id"].to_pylist(),
            table["value_typename"].to_pylist(),
            _payloads(table),
        )
    )
