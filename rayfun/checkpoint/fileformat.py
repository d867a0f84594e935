"""Checkpoint file bytes <-> Arrow tables, as Parquet or as Arrow IPC: the one place that calls
``pyarrow.parquet`` and ``pyarrow.ipc``.

Two formats, for two kinds of file. What a shard writes at a checkpoint (state deltas and bases, timers,
messages in flight, egress) is an Arrow IPC file, LZ4 (or zstd) compressed: writing one is little more than
a copy and a compression, ~50-90 ns a row of a counter's delta against ~200 ns as Parquet (measured,
session 22), and it is written while the shard processes messages, on the same cores. Compaction output,
which is kept for long, and any file past ``STAGE_ABOVE_BYTES`` are Parquet: a quarter smaller, and read a
row group at a time. Both are Arrow's own formats: DuckDB, Polars and pyarrow read either.

Reading a checkpoint must never run code. pyarrow before 14.0.1 rebuilt an Arrow extension type named
``arrow.py_extension_type`` in a file's schema by unpickling bytes taken from the file (CVE-2023-47248), in
Parquet and IPC files alike, so whoever could write the bucket could run code in every reader. rayfun
requires pyarrow>=14.0.1, where that is off, and never turns it on; ``tests/checkpoint/test_parquet_safety.py``
reads crafted files of both formats through this module with the lowest pyarrow allowed. This module imports
nothing of rayfun, so that test can load it alone in an interpreter that has only that pyarrow.

Parquet tables of more than ``STAGE_ABOVE_BYTES`` are written to a local file, not to a buffer in memory (a
growing output buffer held up to three copies of big state at once), in row groups of at most
``ROW_GROUP_BYTES``, so the writer holds one row group's pages, not the whole file's. Smaller ones are
written to memory, which costs them less (no second pass over a file to hash it). ``ParquetFileWriter``
writes a table that arrives in pieces, so big state is never one table; ``ParquetFileReader`` reads a
file a row group at a time, so a restore never holds a big file in Arrow at once. Arrow IPC files are only
written for tables up to ``STAGE_ABOVE_BYTES``, in memory, and read whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypedDict, overload

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

__all__ = [
    "ARROW_CODECS",
    "ROW_GROUP_BYTES",
    "STAGE_ABOVE_BYTES",
    "ParquetFileReader",
    "ParquetFileWriter",
    "ParquetOptions",
    "read_arrow",
    "read_parquet",
    "write_arrow",
    "write_parquet",
]

try:  # tuning knobs: see rayfun/constants.py (the fallback: this module loaded alone, see above)
    from ..constants import ROW_GROUP_BYTES, STAGE_ABOVE_BYTES
except ImportError:
    ROW_GROUP_BYTES = STAGE_ABOVE_BYTES = 64 * 2**20
_MAX_ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default


class ParquetOptions(TypedDict):
    """How a checkpoint file is encoded: the keyword arguments of ``write_parquet`` and ``ParquetFileWriter``."""

    compression: str
    compression_level: int | None
    use_dictionary: Sequence[str]
    write_statistics: Sequence[str] | bool


@overload
def write_parquet(
    table: pa.Table,
    path: None,
    *,
    compression: str,
    compression_level: int | None,
    use_dictionary: Sequence[str],
    write_statistics: Sequence[str] | bool,
) -> pa.Buffer: ...
@overload
def write_parquet(
    table: pa.Table,
    path: str,
    *,
    compression: str,
    compression_level: int | None,
    use_dictionary: Sequence[str],
    write_statistics: Sequence[str] | bool,
) -> None: ...
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
    per_group = _rows_per_group(table)
    buffer = pa.BufferOutputStream() if path is None else None
    pq.write_table(
        table,
        path if buffer is None else buffer,
        row_group_size=per_group,
        compression=compression,
        compression_level=compression_level,
        use_dictionary=list(use_dictionary),
        write_statistics=write_statistics,
    )
    return None if buffer is None else buffer.getvalue()


ARROW_CODECS = {"lz4": "lz4", "zstd": "zstd", "none": None}  # checkpoint compression -> Arrow IPC's (it has no others)


def write_arrow(table: pa.Table, *, compression: str, compression_level: int | None) -> pa.Buffer:
    """Write ``table`` as an Arrow IPC file and return its bytes. ``compression`` is a key of
    ``ARROW_CODECS``. The table is written as one record batch, its dictionaries unified: an IPC file holds
    one dictionary per column, each piece of a state table brings its own, and every batch costs a few
    hundred bytes per column (a delta of 100 rows in 40 pieces took 18 KB as they came, measured; one batch
    is no slower to write, the copy being cheaper than the per-batch work it saves)."""
    codec = ARROW_CODECS[compression.lower()]
    if codec is not None and compression_level is not None:
        codec = pa.Codec(codec, compression_level=compression_level)
    options = ipc.IpcWriteOptions(compression=codec, use_threads=False)  # the shard's cores are busy already
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table.unify_dictionaries().combine_chunks())
    return sink.getvalue()


def read_arrow(data: bytes | pa.Buffer) -> pa.Table:
    """The table in Arrow IPC file ``data`` (raises pyarrow's errors on malformed input)."""
    return ipc.open_file(pa.BufferReader(data)).read_all()


def _rows_per_group(table: pa.Table) -> int:
    """Rows per row group so that one holds at most about ``ROW_GROUP_BYTES``."""
    return max(1, min(_MAX_ROW_GROUP_ROWS, table.num_rows * ROW_GROUP_BYTES // max(table.nbytes, 1)))


def read_parquet(data: bytes | pa.Buffer) -> pa.Table:
    """The table in Parquet ``data`` (raises pyarrow's errors on malformed input)."""
    return pq.read_table(pa.BufferReader(data))


class ParquetFileWriter:
    """Writes tables that arrive one piece at a time to the local file ``path``, gathering them into row
    groups of about ``ROW_GROUP_BYTES``: the writer holds one row group, never the whole file."""

    def __init__(
        self,
        path: str,
        schema: pa.Schema,
        *,
        compression: str,
        compression_level: int | None,
        use_dictionary: Sequence[str],
        write_statistics: Sequence[str] | bool,
    ) -> None:
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression=compression,
            compression_level=compression_level,
            use_dictionary=list(use_dictionary),
            write_statistics=write_statistics,
        )
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            group = pa.concat_tables(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._writer.write_table(group, row_group_size=_rows_per_group(group))

    def close(self) -> None:
        """Write what is pending and the footer."""
        try:
            self._write_pending()
        finally:
            self._writer.close()

    def abort(self) -> None:
        """Close without caring whether the file is complete (the caller removes it)."""
        self._pending = []
        try:
            self._writer.close()
        except Exception:
            pass


class ParquetFileReader:
    """A Parquet file (a local path or bytes) read by columns or a row group at a time."""

    def __init__(self, source: str | bytes | pa.Buffer) -> None:
        self._file = pq.ParquetFile(source if isinstance(source, str) else pa.BufferReader(source))

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self._file.read(columns=list(columns) if columns is not None else None)

    def row_groups(self) -> Iterator[pa.Table]:
        for i in range(self._file.metadata.num_row_groups):
            yield self._file.read_row_group(i)

    def close(self) -> None:
        self._file.close()
