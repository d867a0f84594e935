"""Checkpoint data files: tables encoded as Arrow IPC or Parquet (see fileformat.py for which and why) with
their reference (size, digest, rows), and files read back only after they check out against it. A file's
format is its name's suffix (``.arrow``, ``.parquet``), recorded in the manifest with its digest.

Files are checked against the size and SHA-256 in the manifest before they are parsed (or HMAC-SHA256
with a key: see checksum.py for what each protects against). SHA-256 costs ~1.5 ms per MB here (OpenSSL),
against tens of ms to write the same Parquet; CRC-32 would be ~2x faster but is not collision-resistant,
and the difference is noise next to the upload.

Small files (up to ``STAGE_ABOVE_BYTES``) are encoded and hashed in memory and read whole; big ones are
written piece by piece to a staging file and read a row group at a time (see restore.py), so big state is
never in memory twice.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeAlias

import pyarrow as pa

from ..constants import IO_THREADS  # tuning knobs: see rayfun/constants.py
from .blobs import BlobStore, remove_file
from .checksum import Checksum
from .errors import CorruptCheckpointError
from .fileformat import (
    ARROW_CODECS,
    STAGE_ABOVE_BYTES,
    ParquetFileReader,
    ParquetFileWriter,
    ParquetOptions,
    read_arrow,
    read_parquet,
    write_arrow,
    write_parquet,
)
from .manifest import FileRef
from .records import upgrade_egress
from .restore import StateLayer
from .schema import DICTIONARY_COLUMNS, SCHEMAS

__all__ = ["ARROW_SUFFIX", "PARQUET_SUFFIX", "DataFiles", "Encoded"]

ARROW_SUFFIX, PARQUET_SUFFIX = ".arrow", ".parquet"


Encoded: TypeAlias = pa.Buffer | str  # a file's bytes in memory, or the path of its staging file


class DataFiles:
    """Encodes, puts and reads the data files of checkpoints in ``blobs``."""

    def __init__(self, blobs: BlobStore, checksum: Checksum, compression: str, compression_level: int | None) -> None:
        self.blobs, self.checksum = blobs, checksum
        self.compression, self.compression_level = compression, compression_level
        self.arrow = compression.lower() in ARROW_CODECS  # else Parquet only: IPC has no such codec

    # -- writing --------------------------------------------------------------------------------------

    def encode(
        self,
        kind: str,
        table: pa.Table | Iterable[pa.Table],
        stem: str,
        key_group_range: tuple[int, int],
        checkpoint_id: int,
        shard: int,
        base: bool = True,
        parquet: bool = False,
    ) -> tuple[FileRef, Encoded | None]:
        """Encode ``table`` (or tables that arrive one piece at a time) as the file ``stem`` + its format's
        suffix: its reference (``ref.path`` is where ``put`` puts it) and the data, in memory (a buffer) or,
        past ``STAGE_ABOVE_BYTES``, in a staging file (its path), written piece by piece so big state is
        never one table. What is written in memory is Arrow IPC, what is staged Parquet, as is everything with
        ``parquet`` (compaction output: kept for long) or a codec IPC lacks (see fileformat.py). An empty
        table gives a reference with no path and no data."""
        pieces: list[pa.Table] = []
        held = 0
        writer: ParquetFileWriter | None = None
        staged: str | None = None
        schema = SCHEMAS[kind]
        options = ParquetOptions(
            compression=self.compression,
            compression_level=self.compression_level,
            use_dictionary=DICTIONARY_COLUMNS[kind],
            write_statistics=["key_group"] if "key_group" in schema.names else False,
        )
        try:
            for piece in [table] if isinstance(table, pa.Table) else table:
                if writer is not None:
                    writer.write(piece)
                    continue
                pieces.append(piece)
                held += piece.nbytes
                if held > STAGE_ABOVE_BYTES:  # big: to a staging file, a row group at a time
                    rel = stem + PARQUET_SUFFIX
                    writer, staged = self.blobs.with_staging_file(
                        rel, lambda path: ParquetFileWriter(path, schema, **options)
                    )
                    for p in pieces:
                        writer.write(p)
                    pieces = []
            if writer is None:
                rows = sum(p.num_rows for p in pieces)
                if rows == 0:
                    return FileRef(kind, None, 0, "", 0, key_group_range, checkpoint_id, shard, base), None
                whole = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
                del pieces
                if self.arrow and not parquet:
                    rel = stem + ARROW_SUFFIX
                    data = write_arrow(whole, compression=self.compression, compression_level=self.compression_level)
                else:
                    rel = stem + PARQUET_SUFFIX
                    data = write_parquet(whole, None, **options)
                digest = self.checksum.of(data)
                return FileRef(kind, rel, len(data), digest, rows, key_group_range, checkpoint_id, shard, base), data
            writer.close()
            assert staged is not None
            size, digest = self.checksum.of_file(staged)
        except BaseException:
            if writer is not None:
                writer.abort()
            if staged is not None:
                remove_file(staged)
            raise
        return FileRef(kind, rel, size, digest, writer.rows, key_group_range, checkpoint_id, shard, base), staged

    def put(self, rel: str, data: Encoded) -> None:
        """Put encoded data in place (a staged file is gone after)."""
        if isinstance(data, str):
            self.blobs.put_staged(rel, data)
        else:
            self.blobs.put(rel, data)

    def put_many(self, encoded: dict[str, Encoded]) -> None:
        if len(encoded) <= 1:
            for rel, data in encoded.items():
                self.put(rel, data)
            return
        with ThreadPoolExecutor(min(IO_THREADS, len(encoded))) as pool:
            list(pool.map(lambda item: self.put(*item), encoded.items()))

    @staticmethod
    def discard(encoded: Iterable[Encoded]) -> None:
        """Remove the staging files among ``encoded`` (what a failed write left behind)."""
        for data in encoded:
            if isinstance(data, str):
                remove_file(data)

    # -- reading --------------------------------------------------------------------------------------

    def read(self, ref: FileRef, checkpoint_id: int) -> pa.Table:
        """The verified table of ``ref``: CorruptCheckpointError naming the file if it is missing, of the
        wrong size or digest, unreadable, or not of its kind's columns."""
        assert ref.path is not None
        path = self.blobs.abs(ref.path)
        try:
            data = self.blobs.get(ref.path)
        except FileNotFoundError:
            raise CorruptCheckpointError(path, "missing", checkpoint_id=checkpoint_id) from None
        self._check(path, ref, len(data), self.checksum.of(data), checkpoint_id)
        try:
            table = read_arrow(data) if ref.path.endswith(ARROW_SUFFIX) else read_parquet(data)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorruptCheckpointError(path, "unreadable", str(exc), checkpoint_id) from None
        expected = SCHEMAS[ref.kind]
        if ref.kind == "egress":
            table = upgrade_egress(table)
        if table.num_rows != ref.rows or not table.schema.equals(expected):
            try:  # tolerate schema metadata / nullability drift, never different columns
                table = table.select(expected.names).cast(expected)
            except (pa.ArrowException, KeyError, ValueError) as exc:
                raise CorruptCheckpointError(path, "unreadable", f"unexpected schema: {exc}", checkpoint_id) from None
            if table.num_rows != ref.rows:
                raise CorruptCheckpointError(
                    path, "unreadable", f"{table.num_rows} rows, manifest says {ref.rows}", checkpoint_id
                )
        return table

    def _check(self, path: str, ref: FileRef, size: int, digest: str, checkpoint_id: int) -> None:
        """Raise CorruptCheckpointError unless a file's size and digest are what ``ref`` recorded."""
        if size != ref.size:
            raise CorruptCheckpointError(
                path, "size mismatch", f"{size} bytes, manifest says {ref.size}", checkpoint_id
            )
        if not hmac.compare_digest(digest, ref.sha256):
            raise CorruptCheckpointError(
                path, "checksum mismatch", f"{self.checksum.algorithm} differs from the manifest", checkpoint_id
            )

    def read_many(self, refs: Sequence[FileRef], checkpoint_id: int) -> dict[str, pa.Table]:
        """``read`` of each (concurrently: object stores are latency-bound); path -> table."""
        todo = {r.path: r for r in refs if r.path is not None}
        if not todo:
            return {}
        if len(todo) == 1:
            ((path, ref),) = todo.items()
            return {path: self.read(ref, checkpoint_id)}
        with ThreadPoolExecutor(min(IO_THREADS, len(todo))) as pool:
            futures = {p: pool.submit(self.read, r, checkpoint_id) for p, r in todo.items()}
            return {p: f.result() for p, f in futures.items()}

    @staticmethod
    def streamed(ref: FileRef) -> bool:
        """Whether ``ref`` is read a row group at a time from a local file (big Parquet), not whole."""
        return ref.size > STAGE_ABOVE_BYTES and ref.path is not None and ref.path.endswith(PARQUET_SUFFIX)

    def state_layer(
        self, ref: FileRef, checkpoint_id: int, key_group_range: tuple[int, int], key_groups: int
    ) -> StateLayer:
        """A state file as a layer of a restore limited to ``key_group_range``: read whole if small, else
        from a local file (the file itself on a local disk, a downloaded copy otherwise) a row group at a
        time, verified (size, digest, rows, columns) before any row is used."""
        assert ref.path is not None
        if not self.streamed(ref):
            return StateLayer.of_table(self.read(ref, checkpoint_id), key_group_range, key_groups, ref.key_group_range)
        path = self.blobs.abs(ref.path)
        local, temporary = path, False
        try:
            local, temporary = self.blobs.local_copy(ref.path, ref.size)
            size, digest = self.checksum.of_file(local)
        except FileNotFoundError:
            if temporary:
                remove_file(local)
            raise CorruptCheckpointError(path, "missing", checkpoint_id=checkpoint_id) from None
        except BaseException:
            if temporary:
                remove_file(local)
            raise
        try:
            self._check(path, ref, size, digest, checkpoint_id)
            try:
                reader = ParquetFileReader(local)
                rows, names = reader.num_rows, set(reader.schema.names)
                reader.close()
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise CorruptCheckpointError(path, "unreadable", str(exc), checkpoint_id) from None
            if rows != ref.rows:
                raise CorruptCheckpointError(
                    path, "unreadable", f"{rows} rows, manifest says {ref.rows}", checkpoint_id
                )
            if not names >= set(SCHEMAS["state"].names):
                raise CorruptCheckpointError(path, "unreadable", "unexpected schema: columns missing", checkpoint_id)
            return StateLayer(
                path=local,
                temporary=temporary,
                checkpoint_id=checkpoint_id,
                key_group_range=key_group_range,
                key_groups=key_groups,
                file_range=ref.key_group_range,
            )
        except BaseException:
            if temporary:
                remove_file(local)
            raise
