"""Files in, files out, through fsspec (local paths, ``memory://``, ``s3://``, ``gs://``, ...).

``FileSource`` reads newline-delimited records. The file list is resolved once, when the source is made,
and travels with it, so a partition rebuilt after a failure sees the same files in the same order. Files
are dealt round-robin to ``partitions``; a partition's position is ``(file index, byte offset)`` of the
next line, which makes it replayable: a restore re-reads exactly the lines after the checkpointed one.

``FileSink`` writes, per shard and epoch, one JSON-lines file ``part-<shard>-<epoch>.jsonl``: on a local
disk under a temporary name and then renamed, on an object store in one PUT (the object appears in one
piece; the call is bounded in time, see rayfun/storage.py). A repeated epoch (after a crash) writes the
same final file again with the same records, so publication is idempotent per ``(partition, epoch)`` and
readers never see half a file. Without checkpoints (epoch -1) every batch gets a file of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayfun.io import DeadLetter, DeliverySemantic, Sink, SinkPartition, Source, SourcePartition, SourceRows
from rayfun.messages import KAFKA_PRODUCER_RECORD, EgressMessage, Message
from rayfun.storage import call_bounded
from rayfun.types import BUILTIN_TYPES, check_id, display_value, validate_typename

__all__ = ["FileSink", "FileSource", "read_sink_records"]

log = logging.getLogger(__name__)

_READ_BLOCK = 1 << 20

#: text parsers for the built-in value types: a line "42" under io.statefun.types/int is the int 42.
_TEXT_PARSERS: dict[str, Callable[[str], Any]] = {
    "io.statefun.types/string": str,
    "io.statefun.types/int": int,
    "io.statefun.types/long": int,
    "io.statefun.types/float": float,
    "io.statefun.types/double": float,
    "io.statefun.types/bool": lambda s: {"true": True, "false": False, "1": True, "0": False}[s.strip().lower()],
}


def _expand(urls: str | Sequence[str], storage_options: Mapping[str, Any]) -> list[str]:
    import fsspec

    urls = [urls] if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for url in urls:
        fs, _, paths = fsspec.get_fs_token_paths(url, storage_options=dict(storage_options))
        paths = sorted(p for p in paths if fs.isfile(p))
        if not paths and not any(c in url for c in "*?["):
            raise FileNotFoundError(f"FileSource: {url} does not exist (or is not a file)")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        found.extend(p if protocol in ("file", "local") else fs.unstrip_protocol(p) for p in paths)
    return found


class FileSource(Source):
    """Newline-delimited records from files, each line one message to ``(target, key(line))``.

    ``key``: the name of a JSON field that holds the target id (each line then is a JSON object), or a
    function ``key(line: str) -> str``. ``value``: what of the line is the message (default the whole
    line): a JSON field name or a function ``value(line: str)``. ``value_type``: built-in types are parsed
    from text (``"42"`` -> 42) or taken as they are (a JSON number); any other typename carries bytes: the
    line's own bytes unchanged by default (e.g. under a JSON type), else the extracted value as UTF-8 or
    JSON. Lines that cannot be routed or parsed come back as ``DeadLetter``s; empty lines are skipped.
    """

    def __init__(
        self,
        id: str,
        urls: str | Sequence[str],
        target: str | Sequence[str],
        *,
        key: str | Callable[[str], str],
        value: str | Callable[[str], Any] | None = None,
        value_type: str = "io.statefun.types/string",
        partitions: int = 1,
        batch_size: int = 2000,
        storage_options: Mapping[str, Any] | None = None,
    ):
        validate_typename(id)
        targets = (target,) if isinstance(target, str) else tuple(target)
        if not targets:
            raise ValueError(f"FileSource {id}: needs at least one target function type")
        for t in targets:
            validate_typename(t)
        validate_typename(value_type)
        if not (isinstance(key, str) and key) and not callable(key):
            raise ValueError(f"FileSource {id}: key must be a JSON field name or a function line -> id")
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.id = id
        self.targets = targets
        if value is not None and not (isinstance(value, str) and value) and not callable(value):
            raise ValueError(f"FileSource {id}: value must be a JSON field name or a function line -> value")
        self.key = key
        self.value = value
        self.value_type = value_type
        self.batch_size = batch_size
        self.storage_options = dict(storage_options or {})
        self.files = _expand(urls, self.storage_options)
        self._count = partitions

    def partitions(self) -> list[str]:
        return [str(i) for i in range(self._count)]

    def build_partition(self, partition: str, resume_state: Any | None) -> SourcePartition:
        index = int(partition)
        if not 0 <= index < self._count:
            raise ValueError(f"FileSource {self.id}: unknown partition {partition!r}")
        file_index, offset = resume_state if resume_state is not None else (0, 0)
        return FileSourcePartition(self, self.files[index :: self._count], int(file_index), int(offset))


class FileSourcePartition(SourcePartition):
    """Reads its files in order; ``snapshot()`` is ``(file index, byte offset)`` of the next line."""

    def __init__(self, source: FileSource, files: list[str], file_index: int, offset: int):
        self._source = source
        self._files = files
        self._file_index = file_index
        self._offset = offset  # of the first byte not yet returned as (part of) a record
        self._handle: Any = None
        self._buffer = b""  # bytes read; those from _pos on are after _offset
        self._pos = 0  # lines are cut at this position (slicing the rest off per line copied it: quadratic)
        self._eof = False
        self._parse = _TEXT_PARSERS.get(source.value_type)
        # exactly one of the two: the JSON field that holds the id, or the function line -> id
        self._field: str | None = None
        self._key_fn: Callable[[str], str] | None = None
        if isinstance(source.key, str):
            self._field = source.key
        else:
            self._key_fn = source.key

    def _open(self) -> bool:
        import fsspec

        if self._file_index >= len(self._files):
            return False
        self._handle = fsspec.open(self._files[self._file_index], "rb", **self._source.storage_options).open()
        if self._offset:
            self._handle.seek(self._offset)
        self._buffer, self._pos, self._eof = b"", 0, False
        return True

    def _next_file(self) -> None:
        self._close_handle()
        self._file_index += 1
        self._offset = 0

    def next_rows(self) -> SourceRows | None:
        rows: SourceRows = []
        while len(rows) < self._source.batch_size:
            if self._handle is None and not self._open():
                return rows or None
            buffer, pos = self._buffer, self._pos
            newline = buffer.find(b"\n", pos)
            if newline < 0:
                if not self._eof:
                    block = self._handle.read(_READ_BLOCK)
                    if block:  # keep only the unfinished line, then the new block
                        self._buffer, self._pos = buffer[pos:] + block, 0
                        continue
                    self._eof = True
                if pos >= len(buffer):  # the file is done
                    self._next_file()
                    continue
                line, consumed = buffer[pos:], len(buffer) - pos  # a last line without a newline
            else:
                line, consumed = buffer[pos:newline], newline + 1 - pos
            self._pos = pos + consumed
            start = self._offset
            self._offset += consumed
            self._route(line.rstrip(b"\r"), start, rows)
        return rows

    def _route(self, raw: bytes, start: int, rows: SourceRows) -> None:
        if not raw.strip():
            return
        source = self._source
        where = f"{self._files[self._file_index]}@{start}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rows.append(DeadLetter(f"line {where} is not UTF-8", source.id, raw))
            return
        obj: Any = None
        try:
            if self._field is not None or isinstance(source.value, str):
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("is not a JSON object")
            key_fn = self._key_fn
            if key_fn is not None:
                id = key_fn(text)
            else:  # self._field is the id's JSON field
                if self._field not in obj:
                    raise ValueError(f"has no field {self._field!r}")
                id = obj[self._field]
                id = id if isinstance(id, str) else json.dumps(id)
            check_id(id, "its target id")
        except Exception as exc:
            rows.append(DeadLetter(f"line {where} cannot be routed: {exc}", source.id, raw))
            return
        try:
            payload = self._payload(raw, text, obj)
        except Exception as exc:
            rows.append(DeadLetter(f"line {where} is not a {source.value_type}: {exc!r}", source.id, raw))
            return
        for target in source.targets:
            rows.append((target, id, None, source.value_type, payload))

    def _payload(self, raw: bytes, text: str, obj: Any) -> Any:
        extract = self._source.value
        if extract is None:
            value: Any = text if self._parse is not None else raw
        elif isinstance(extract, str):
            if extract not in obj:
                raise KeyError(f"no field {extract!r}")
            value = obj[extract]
        else:
            value = extract(text)
        if self._parse is not None:  # a built-in type: parse text, check anything else
            if isinstance(value, str) and self._parse is not str:
                value = self._parse(value)
            return BUILTIN_TYPES[self._source.value_type].check(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        return json.dumps(value, ensure_ascii=False).encode("utf-8")

    def next_batch(self) -> list[Message | DeadLetter] | None:
        rows = self.next_rows()
        if rows is None:
            return None
        return [r if isinstance(r, DeadLetter) else Message(r[0], r[1], r[3], r[4]) for r in rows]

    def snapshot(self) -> tuple[int, int]:
        return (self._file_index, self._offset)

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def close(self) -> None:
        self._close_handle()


# ---------------------------------------------------------------------------------------------------------


def _json_value(typename: str, payload: Any) -> dict[str, Any]:
    """The value of an egress record for a JSON line: decoded where its type is known, else text or base64."""
    if typename == KAFKA_PRODUCER_RECORD and isinstance(payload, (bytes, bytearray)):
        from rayfun.connectors.kafka.records import decode_producer_record

        try:
            rec = decode_producer_record(payload)
        except ValueError:
            pass
        else:
            return {"value": {"topic": rec.topic, "key": rec.key, **_json_value("", rec.value)}}
    value = display_value(typename, payload) if typename else payload
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"value_base64": base64.b64encode(value).decode("ascii")}
        try:
            return {"value": json.loads(text)}
        except ValueError:
            return {"value": text}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"value": repr(value)}
    return {"value": value}


class FileSink(Sink):
    """An egress to JSON-lines files under ``url_dir``: ``{"egress", "type", "value"}`` per record."""

    def __init__(
        self,
        id: str,
        url_dir: str,
        *,
        delivery: str = DeliverySemantic.EXACTLY_ONCE,
        storage_options: Mapping[str, Any] | None = None,
    ):
        validate_typename(id)
        if delivery not in (DeliverySemantic.EXACTLY_ONCE, DeliverySemantic.AT_LEAST_ONCE):
            raise ValueError(f"FileSink {id}: delivery must be exactly-once or at-least-once, got {delivery!r}")
        self.id = id
        self.url_dir = url_dir.rstrip("/")
        self.delivery = delivery
        self.storage_options = dict(storage_options or {})

    def build_partition(self, index: int, count: int) -> SinkPartition:
        return FileSinkPartition(self, index)


class FileSinkPartition(SinkPartition):
    def __init__(self, sink: FileSink, index: int):
        import fsspec

        self._sink = sink
        self._index = index
        self._fs, self._dir = fsspec.core.url_to_fs(sink.url_dir, **sink.storage_options)
        self._fs.makedirs(self._dir, exist_ok=True)
        self._seq = 0

    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        if not records:
            return
        if epoch >= 0:
            name = f"part-{self._index:05d}-{epoch:012d}.jsonl"
        else:  # no checkpoints: nothing is replayed, so each batch gets its own file
            self._seq += 1
            name = f"part-{self._index:05d}-live-{uuid.uuid4().hex[:12]}-{self._seq:08d}.jsonl"
        lines = []
        for r in records:
            row = {"egress": r.typename, "type": r.value_type_name, **_json_value(r.value_type_name, r.payload)}
            lines.append(json.dumps(row, ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        final = f"{self._dir}/{name}"
        fs = self._fs
        if not _is_local(fs):  # one PUT: atomic on an object store, and bounded in time (rayfun/storage.py)
            call_bounded(fs, "pipe_file", final, data, size=len(data))
            return
        temp = f"{self._dir}/.tmp-{name}-{uuid.uuid4().hex[:8]}"
        with fs.open(temp, "wb") as f:
            f.write(data)
        try:
            os.replace(temp, final)  # atomic, and overwrites a file left by an earlier attempt
        except BaseException:
            try:
                fs.rm(temp)
            except Exception:
                pass
            raise


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def read_sink_records(url_dir: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every record a ``FileSink`` wrote under ``url_dir``, file by file in name order (tests, notebooks)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url_dir, **dict(storage_options or {}))
    out: list[dict[str, Any]] = []
    if not fs.exists(path):
        return out
    for p in sorted(fs.ls(path, detail=False)):
        name = p.rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".jsonl"):
            with fs.open(p, "rb") as f:
                out.extend(json.loads(line) for line in f.read().decode("utf-8").splitlines() if line)
    return out
