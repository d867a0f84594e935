"""Parquet bytes <-> Arrow tables for checkpoint files: the one place that calls ``pyarrow.parquet``.

Reading a checkpoint must never run code. pyarrow before 14.0.1 rebuilt an Arrow extension type named
``arrow.py_extension_type`` in a file's schema by unpickling bytes taken from the file (CVE-2023-47248), so
whoever could write the bucket could run code in every reader. rayfun requires pyarrow>=14.0.1, where that
is off, and never turns it on; ``tests/checkpoint/test_parquet_safety.py`` reads a crafted file through
``read_parquet`` with the lowest pyarrow allowed. This module imports nothing of rayfun, so that test can load
it alone in an interpreter that has only that pyarrow.

Written files stay Arrow buffers (no copy into ``bytes``): a checkpoint of big state would otherwise hold
its Parquet twice.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_parquet", "read_parquet"]


def write_parquet(table: pa.Table, *, compression: str, compression_level: int | None,
                  use_dictionary: Sequence[str], write_statistics: Sequence[str] | bool) -> pa.Buffer:
    """``table`` as Parquet bytes, in an Arrow buffer (it supports the buffer protocol: hash it, write it)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, compression_level=compression_level,
                   use_dictionary=list(use_dictionary), write_statistics=write_statistics)
    return sink.getvalue()


def read_parquet(data: bytes | pa.Buffer) -> pa.Table:
    """The table in Parquet ``data`` (raises pyarrow's errors on malformed input)."""
    return pq.read_table(pa.BufferReader(data))
