"""The bytes of a batch of rows on its way to another shard (``Outbox`` and the driver's channel send it,
``ShardCore.deliver`` reads it).

A batch is pickled by column, not by row: a column whose rows all hold one value (the target type, no
caller, the value type: what a source's batch usually is) travels once, and the ids travel as one string
joined on a separator that none of them holds (else as a list). Pickling the rows themselves memoizes
every id and builds a tuple per row on both sides; by column, a batch of 8,000 counter rows pickles in
~130 ns a row instead of ~250, reads back in ~180 instead of ~220, and is 40 % of the bytes (fewer Ray
calls per batch, see ``DELIVERY_INLINE_BYTES``). Payloads are pickled as they are (ints, strings, bytes).
"""

from __future__ import annotations

import pickle
from itertools import repeat
from operator import itemgetter
from typing import Any

__all__ = ["decode_rows", "encode_rows"]

_SEPARATOR = "\x1f"  # the ASCII unit separator: ids hold it rarely, and then they travel as a list
_TTYPE, _ID, _CALLER, _VTYPE, _PAYLOAD = (itemgetter(i) for i in range(5))


def _same(column: list) -> bool:
    """Every row of ``column`` holds its first value (the same object, or an equal one); an empty column
    travels as the list it is."""
    return bool(column) and column.count(column[0]) == len(column)


def encode_rows(rows: list[tuple]) -> bytes:
    """A batch of rows ``(target type, target id, caller, value type, payload)`` as bytes."""
    ttypes = list(map(_TTYPE, rows))
    ids = list(map(_ID, rows))
    callers = list(map(_CALLER, rows))
    vtypes = list(map(_VTYPE, rows))
    joined = _SEPARATOR.join(ids)
    n = len(rows)
    return pickle.dumps(
        (
            n,
            ttypes[0] if _same(ttypes) else ttypes,  # a str, or a list
            joined if n and joined.count(_SEPARATOR) == n - 1 else ids,  # a str, or a list
            callers[0] if _same(callers) else callers,  # None or a (type, id) tuple, or a list
            vtypes[0] if _same(vtypes) else vtypes,
            list(map(_PAYLOAD, rows)),
        ),
        protocol=5,
    )


def decode_rows(data: bytes) -> list[tuple]:
    """The rows ``encode_rows`` made ``data`` of, in their order."""
    n, ttypes, ids, callers, vtypes, payloads = pickle.loads(data)
    return list(
        zip(
            _column(ttypes, n),
            ids.split(_SEPARATOR) if type(ids) is str else ids,
            _column(callers, n),
            _column(vtypes, n),
            payloads,
        )
    )


def _column(value: Any, n: int) -> Any:
    return value if type(value) is list else repeat(value, n)
