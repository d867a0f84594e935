"""Parquet bytes <-> Arrow tables for checkpoint files: the one place that calls ``pyarrow.parquet``.

Reading a checkpoint must never run code. pyarrow before 14.0.1 rebuilt an Arrow extension type named
``arrow.py_extension_type`` in a file's schema by unpickling bytes taken from the file (CVE-2023-47248), so
whoever could write the bucket could run code in every reader. rayfun requires pyarrow>=14.0.1, where that
is off, and never turns it on; ``tests/checkpoint/test_parquet_safety.py`` reads a crafted file through
``read_parquet`` with the lowest pyarrow allowed. This module imports nothing of rayfun, so that test can load
it alone in an interpreter that has only that pyarrow.

Tables of more than ``STAGE_ABOVE_BYTES`` are written to a local file, not to a buffer in memory (a
growing output buffer held up to three copies of big state at once), in row groups of at most
``ROW_GROUP_BYTES``, so the writer holds one row group's pages, not the whole file's. Smaller ones are
written to memory, which costs them less (no second pass over a file to hash it).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ROW_GROUP_BYTES", "STAGE_ABOVE_BYTES", "read_parquet", "write_parquet"]

ROW_GROUP_BYTES = 64 * 2**20
STAGE_ABOVE_BYTES = 64 * 2**20
_MAX_ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default


def write_parquet(
    table: pa.Table,
    path: str | None,
    *,
    compression: str,
    compression_level: int | None,
    use_dictionary: Sequence[str],
    write_statistics: Sequence[str] | bool,
) -> pa.Buffer | None:
    """Write ``table`` as Parquet to the local file ``path``, or with ``path=None`` return the bytes (in an
    Arrow buffer: it supports the buffer protocol, so it is hashed and written without a copy)."""
    rows = table.num_rows
    per_group = max(1, min(_MAX_ROW_GROUP_ROWS, rows * ROW_GROUP_BYTES // max(table.nbytes, 1)))
    sink = pa.BufferOutputStream() if path is None else path
    pq.write_table(
        table,
        sink,
        row_group_size=per_group,
        compression=compression,
        compression_level=compression_level,
        use_dictionary=list(use_dictionary),
        write_statistics=write_statistics,
    )
    return sink.getvalue() if path is None else None


def read_parquet(data: bytes | pa.Buffer) -> pa.Table:
    """The table in Parquet ``data`` (raises pyarrow's errors on malformed input)."""
    return pq.read_table(pa.BufferReader(data))
