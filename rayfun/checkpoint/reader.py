"""``read_state``: a checkpoint's full state as one Arrow table, without a running job.

    >>> import rayfun
    >>> t = rayfun.checkpoint.read_state("s3://bucket/app/checkpoints")
    >>> t.to_pandas().query("function_type == 'example/counter'")[["id", "value_int"]]
    >>> duckdb.sql("select id, value_int from t where state_name = 'count' order by value_int desc")

One row per state value, sorted by (function_type, id, state_name). Built-in values are in typed columns
(``value_int`` for int/long, ``value_float`` for float/double, ``value_str``, ``value_bool``) so that
pandas and SQL see numbers and strings, not protobuf bytes; ``value`` always holds the StateFun wire bytes
(what a remote function would receive); ``value_json`` holds JSON text for the types passed in ``types``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..types import BUILTIN_TYPES, Type
from .errors import CheckpointError, CorruptCheckpointError
from .state_codec import with_key_groups
from .store import CheckpointStore

log = logging.getLogger("rayfun.checkpoint")

__all__ = ["READ_STATE_SCHEMA", "read_state"]

READ_STATE_SCHEMA = pa.schema(
    [
        pa.field("function_type", pa.string()),
        pa.field("id", pa.string()),
        pa.field("state_name", pa.string()),
        pa.field("value_typename", pa.string()),
        pa.field("value", pa.binary()),
        pa.field("value_int", pa.int64()),
        pa.field("value_float", pa.float64()),
        pa.field("value_str", pa.string()),
        pa.field("value_bool", pa.bool_()),
        pa.field("value_json", pa.string()),
        pa.field("expires_at_ms", pa.int64()),
        pa.field("key_group", pa.int32()),
    ]
)

_COLUMN_OF = {
    t: c
    for t, c in (
        ("io.statefun.types/int", "value_int"),
        ("io.statefun.types/long", "value_int"),
        ("io.statefun.types/float", "value_float"),
        ("io.statefun.types/double", "value_float"),
        ("io.statefun.types/string", "value_str"),
        ("io.statefun.types/bool", "value_bool"),
    )
}


def _types_by_name(types: Iterable[Type | str] | Mapping[str, Type] | None) -> dict[str, Type | None]:
    """typename -> Type, or None for a bare typename (taken to be UTF-8 JSON, as ``make_json_type``)."""
    if types is None:
        return {}
    if isinstance(types, Mapping):
        return dict(types)
    out: dict[str, Type | None] = {}
    for t in types:
        if isinstance(t, str):
            out[t] = None
        elif isinstance(t, Type):
            out[t.typename] = t
        else:
            raise TypeError(f"types: expected rayfun Types or typenames, got {type(t).__name__}")
    return out


def _json_text(t: Type, data: bytes) -> str | None:
    try:
        return json.dumps(t.serializer().deserialize(data), ensure_ascii=False, default=str)
    except Exception:  # undecodable: leave the bytes to the reader rather than fail the whole read
        return None


def read_state(
    url: str,
    types: Iterable[Type | str] | Mapping[str, Type] | None = None,
    *,
    checkpoint_id: int | None = None,
    function_types: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    key: str | bytes | None = None,
) -> pa.Table:
    """The full state of the newest complete, intact checkpoint under ``url`` (or of ``checkpoint_id``).

    ``types``: Types (or typenames of JSON types) whose values to decode into ``value_json``.
    ``function_types``: keep only these. The checkpoint id is in the schema metadata
    (``b"rayfun.checkpoint_id"``). ``key``: the application's ``checkpoint_key`` if it has one (default
    $RAYFUN_CHECKPOINT_KEY). Raises CheckpointError when there is no checkpoint.
    """
    store = CheckpointStore(url, storage_options=storage_options, key=key)
    if checkpoint_id is None:
        state = m = None
        for candidate in store.manifests():
            try:
                state, m = store.read_state_table(candidate), candidate
                break
            except CorruptCheckpointError as exc:  # a damaged file: fall back to the previous checkpoint
                log.error("read_state: %s; trying an older checkpoint", exc)
        if m is None:
            raise CheckpointError(f"no complete, intact checkpoint under {url}")
    else:
        m = store.manifest(checkpoint_id)
        state = store.read_state_table(m)
    state = with_key_groups(state, m.key_groups)
    plain = pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in state.schema])
    state = state.cast(plain)  # users get plain strings (and sort_by does not take dictionaries)
    if function_types is not None:
        state = state.filter(pc.is_in(state["function_type"], value_set=pa.array(list(function_types), pa.string())))
    if state.num_rows:
        state = state.sort_by([("function_type", "ascending"), ("id", "ascending"), ("state_name", "ascending")])
    state = state.combine_chunks()
    vtype = state["value_typename"].combine_chunks()
    present = set(pc.unique(vtype).to_pylist()) if state.num_rows else set()

    value = state["value"].combine_chunks()
    for typename in sorted(present & set(BUILTIN_TYPES)):  # wire bytes of built-in values
        mask = pc.equal(vtype, typename)
        values = state.filter(mask)[_COLUMN_OF[typename]].to_pylist()
        encoded = pa.array(map(BUILTIN_TYPES[typename].serialize, values), pa.binary())
        value = pc.replace_with_mask(value, mask, encoded)

    value_json = pa.nulls(state.num_rows, pa.string())
    for typename, t in _types_by_name(types).items():
        if typename not in present or typename in BUILTIN_TYPES:
            continue
        mask = pc.equal(vtype, typename)
        raw = state.filter(mask)["value"].combine_chunks()
        if t is None:
            text = raw.cast(pa.string())  # UTF-8 JSON as is (validated by the cast)
        else:
            text = pa.array([_json_text(t, b) for b in raw.to_pylist()], pa.string())
        value_json = pc.replace_with_mask(value_json, mask, text)

    columns = {
        name: state[name]
        for name in (
            "function_type",
            "id",
            "state_name",
            "value_typename",
            "value_int",
            "value_float",
            "value_str",
            "value_bool",
            "expires_at_ms",
            "key_group",
        )
    }
    columns["value"] = value
    columns["value_json"] = value_json
    table = pa.table({f.name: columns[f.name] for f in READ_STATE_SCHEMA}, schema=READ_STATE_SCHEMA)
    return table.replace_schema_metadata({b"rayfun.checkpoint_id": str(m.checkpoint_id).encode()})
