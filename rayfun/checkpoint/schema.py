"""The Arrow schemas of checkpoint files: what a user sees when opening them with pyarrow, pandas or DuckDB.

State rows are *long*: one row per (instance, state value), because state specs differ per function type
and remote functions register theirs at run time; a wide table per type would need schema evolution.
Built-in values are stored in typed columns (``value_int``, ``value_float``, ``value_str``,
``value_bool``), not as protobuf bytes: that is what the runtime holds in memory (no encode per value),
what Parquet compresses best, and what a SQL user wants to query. Every other type is stored as its
serialized bytes in ``value``. Exactly one value column is non-null on a value row.

Timers, messages and egress records keep the StateFun wire form ``(value_typename, value bytes)``: they
are short-lived, read back only by rayfun, and the bytes are what travels to a remote function anyway.
Shards write ``key_group`` (of state, timers and messages) as null: computing it costs a CRC per id at every checkpoint, and a
restore onto the same shard ranges never needs it (a file lies within its writer's range, recorded in the
manifest). Readers that split a file across ranges (rescaling, compaction) or show it (``read_state``)
compute it then (``state_codec.with_key_groups``).
Low-cardinality string columns are written dictionary-encoded by Parquet (see ``DICTIONARY_COLUMNS``).
In the state table they are Arrow dictionaries in memory too: a constant column costs no per-row string,
and Parquet stores the dictionary without hashing every value. Arrow compute (``equal``, ``is_in``,
``unique``) accepts them as they are; ``read_state`` hands users plain strings.
"""

from __future__ import annotations

import pyarrow as pa

from ..types import BoolType, DoubleType, FloatType, IntType, LongType, StringType

__all__ = [
    "ADDRESS_COLUMNS",
    "DICTIONARY_COLUMNS",
    "EGRESS_SCHEMA",
    "MESSAGES_SCHEMA",
    "SCHEMAS",
    "STATE_SCHEMA",
    "TIMERS_SCHEMA",
    "VALUE_COLUMNS",
    "VALUE_COLUMN_OF",
    "value_column",
]

_DICT = pa.dictionary(pa.int32(), pa.string())

#: one row per non-empty state value of an instance, or one tombstone row (``deleted``) per removed instance
STATE_SCHEMA = pa.schema(
    [
        pa.field("key_group", pa.int32()),  # null where the writer left it to readers (see below)
        pa.field("function_type", _DICT, nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("state_name", _DICT),  # null on a tombstone
        pa.field("value_typename", _DICT),  # null on a tombstone
        pa.field("value_int", pa.int64()),  # io.statefun.types/int and /long
        pa.field("value_float", pa.float64()),  # io.statefun.types/float and /double (held as Python float)
        pa.field("value_str", pa.string()),  # io.statefun.types/string
        pa.field("value_bool", pa.bool_()),  # io.statefun.types/bool
        pa.field("value", pa.binary()),  # any other type: its serialized bytes
        pa.field("expires_at_ms", pa.int64()),  # expiry deadline, ms since the epoch; null = none
        pa.field("deleted", pa.bool_(), nullable=False),  # tombstone: the instance became empty
    ]
)

#: pending delayed messages (``send_after``), keyed by the *sender* (timers live in the sender's shard)
TIMERS_SCHEMA = pa.schema(
    [
        pa.field("key_group", pa.int32()),  # null where the writer left it to readers
        pa.field("due_ms", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("sender_typename", pa.string(), nullable=False),
        pa.field("sender_id", pa.string(), nullable=False),
        pa.field("token", pa.string(), nullable=False),
        pa.field("target_typename", pa.string(), nullable=False),
        pa.field("target_id", pa.string(), nullable=False),
        pa.field("value_typename", pa.string(), nullable=False),
        pa.field("value", pa.binary(), nullable=False),
    ]
)

#: messages not yet handled plus the recorded channel state, keyed by the *target*, in delivery order
MESSAGES_SCHEMA = pa.schema(
    [
        pa.field("key_group", pa.int32()),  # null where the writer left it to readers
        pa.field("target_typename", pa.string(), nullable=False),
        pa.field("target_id", pa.string(), nullable=False),
        pa.field("caller_typename", pa.string()),
        pa.field("caller_id", pa.string()),
        pa.field("value_typename", pa.string(), nullable=False),
        pa.field("value", pa.binary(), nullable=False),
    ]
)

#: the columns whose address a row's key group is of (see ``state_codec.with_key_groups``)
ADDRESS_COLUMNS = {
    "state": ("function_type", "id"),
    "timers": ("sender_typename", "sender_id"),
    "messages": ("target_typename", "target_id"),
}

#: the egress records a shard produced in the epoch that the checkpoint closes (re-published after a crash)
EGRESS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.int32(), nullable=False),  # the shard that emitted it (its sink partition)
        pa.field("epoch", pa.int64(), nullable=False),  # the checkpoint epoch it belongs to
        pa.field("seq", pa.int64(), nullable=False),  # its position in that shard's epoch
        pa.field("egress_id", pa.string(), nullable=False),
        pa.field("value_typename", pa.string(), nullable=False),
        pa.field("value", pa.binary(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "state": STATE_SCHEMA,
    "timers": TIMERS_SCHEMA,
    "messages": MESSAGES_SCHEMA,
    "egress": EGRESS_SCHEMA,
}

DICTIONARY_COLUMNS: dict[str, list[str]] = {
    "state": ["function_type", "state_name", "value_typename"],
    "timers": ["sender_typename", "target_typename", "value_typename"],
    "messages": ["target_typename", "caller_typename", "value_typename"],
    "egress": ["egress_id", "value_typename"],
}

#: built-in typename -> the typed column holding its values
VALUE_COLUMN_OF: dict[str, str] = {
    IntType.typename: "value_int",
    LongType.typename: "value_int",
    FloatType.typename: "value_float",
    DoubleType.typename: "value_float",
    StringType.typename: "value_str",
    BoolType.typename: "value_bool",
}

VALUE_COLUMNS: tuple[str, ...] = ("value_int", "value_float", "value_str", "value_bool", "value")


def value_column(typename: str) -> str:
    """The state column that holds values of ``typename``."""
    return VALUE_COLUMN_OF.get(typename, "value")
