"""``rayfun checkpoints`` / ``rayfun state``: what a checkpoint directory holds.

Both read the storage directly (a local directory, ``s3://bucket/prefix``, any fsspec URL), so they work on
the checkpoints of a stopped or crashed application and need no Ray cluster. Tables are for people; JSON
lines (one object per line) are for jq and scripts; ``state`` also writes Parquet for pandas and DuckDB.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import pyarrow as pa
import pyarrow.compute as pc

from ..checkpoint import (
    CheckpointError,
    CheckpointKeyError,
    CheckpointStore,
    CorruptCheckpointError,
    Manifest,
    read_state,
)
from ..checkpoint.checksum import KEY_ENV
from ..types import BUILTIN_TYPES
from .errors import CliError

__all__ = ["COMMANDS", "checkpoints", "state"]

CELL_WIDTH = 40  #: table cells longer than this are cut (ids and values; JSON and Parquet keep everything)
_DATA_DIR_RE = re.compile(r"cp-(\d+)$")
_TYPED_COLUMNS = ("value_int", "value_float", "value_str", "value_bool")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_F = TypeVar("_F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------------------
# Opening the storage.


def _storage_arguments(command: _F) -> _F:
    """The URL argument and the options every command that reads checkpoint storage takes."""
    command = click.option(
        "--key-file",
        type=click.Path(exists=True, dir_okay=False),
        help=f"The application's checkpoint key (signed checkpoints); default ${KEY_ENV}.",
    )(command)
    command = click.option(
        "--storage-option",
        "storage_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="An fsspec storage option, repeatable (endpoint_url=http://..., anon=true, client_kwargs.region_name=...).",
    )(command)
    return click.argument("url")(command)


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec storage options: a dotted KEY nests (``client_kwargs.region_name=x``); a
    VALUE that reads as JSON (``true``, ``10``, ``{"a": 1}``) is that value, anything else a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--storage-option")
        *parents, leaf = key.split(".")
        target = options
        for name in parents:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key}: {name} is already set to a value", param_hint="--storage-option")
        try:
            target[leaf] = json.loads(text)
        except ValueError:
            target[leaf] = text
    return options


def _read_key(path: str | None) -> bytes | None:
    """The key in ``path`` (a trailing newline is not part of it); None leaves the store to $RAYFUN_CHECKPOINT_KEY."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read().rstrip(b"\r\n")


@dataclass(frozen=True)
class Storage:
    """A checkpoint directory as the commands were told to open it (``read_state`` takes the same)."""

    url: str
    options: dict[str, Any]
    key: bytes | None
    store: CheckpointStore


def _open_storage(url: str, storage_option: Sequence[str], key_file: str | None) -> Storage:
    """The store under ``url``; a missing directory is said in one line rather than found later as an empty list."""
    options, key = parse_storage_options(storage_option), _read_key(key_file)
    try:
        store = CheckpointStore(url, storage_options=options, key=key)
    except ValueError as exc:  # a key that is too short
        raise CliError(f"checkpoint key: {exc}") from None
    if not store.blobs.fs.exists(store.blobs.root):
        raise CliError(f"{url}: no such directory")
    return Storage(url, options, key, store)


def _key_refusal(store: CheckpointStore, exc: CheckpointKeyError) -> str:
    """Why a manifest was refused, with the CLI's way to give the key."""
    if store.checksum.algorithm == "sha256":  # no key given: the checkpoints are signed
        return f"signed with a checkpoint key: pass --key-file (or set ${KEY_ENV})"
    return str(exc)


def _damage(store: CheckpointStore, exc: CorruptCheckpointError) -> str:
    """A damaged file in a few words: cause, path relative to the checkpoint directory, detail."""
    detail = f" ({exc.detail})" if exc.detail else ""
    return f"{exc.reason}: {store.blobs.rel(exc.path)}{detail}"


def _utc(ms: int | None, sep: str = " ") -> str | None:
    """Milliseconds since the epoch as UTC date and time to the second (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(f"%Y-%m-%d{sep}%H:%M:%S")


# --------------------------------------------------------------------------------------------------------
# rayfun checkpoints


@dataclass
class CheckpointRow:
    """One checkpoint as ``rayfun checkpoints`` shows it.

    ``complete``: it has a manifest (it was committed). ``status``: ``valid`` (the manifest parses and the
    files check out), ``damaged`` (the manifest or a file it names is bad; ``reason`` says which),
    ``refused`` (signed with another key, or a key is missing), ``quarantined`` (set aside by a restart
    that found it damaged), ``incomplete`` (files without a manifest: being written, or abandoned).
    ``size_bytes``: the manifest plus every file a restore of it reads (also those it shares with older
    checkpoints).
    """

    id: int
    status: str
    complete: bool = False
    written_ms: int | None = None
    size_bytes: int | None = None
    shards: int | None = None
    key_groups: int | None = None
    parent_id: int | None = None
    reason: str | None = None
    resume: bool = False

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    def describe(self, m: Manifest, manifest_size: int | None) -> None:
        self.written_ms, self.shards, self.key_groups, self.parent_id = (
            m.created_ms,
            len(m.shards),
            m.key_groups,
            m.parent_id,
        )
        self.size_bytes = (manifest_size or 0) + sum(ref.size for ref in m.files())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "written_utc": None if self.written_ms is None else f"{_utc(self.written_ms, 'T')}Z",
            "size_bytes": self.size_bytes,
            "shards": self.shards,
            "key_groups": self.key_groups,
            "parent_id": self.parent_id,
            "complete": self.complete,
            "valid": self.valid,
            "status": self.status,
            "reason": self.reason,
            "resume": self.resume,
        }


def _listing(store: CheckpointStore, rel_dir: str) -> dict[str, dict]:
    """Name -> fsspec entry (``size``, modification time) of the files directly under ``rel_dir``."""
    return {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: e for e in store.blobs.ls(rel_dir, detail=True)}


def _mtime_ms(entry: dict | None) -> int | None:
    """When a file was last written, from a listing entry (local disks say ``mtime``, S3 ``LastModified``)."""
    if entry is None:
        return None
    when = entry.get("mtime", entry.get("LastModified"))
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    return int(float(when) * 1000) if when is not None else None


def _committed(
    store: CheckpointStore, cid: int, full: bool, manifests: dict[str, dict]
) -> tuple[CheckpointRow, Manifest | None] | None:
    """A checkpoint that has a manifest: parsed, then verified (sizes, or with ``full`` every digest)."""
    entry = manifests.get(store.manifest_path(cid).rsplit("/", 1)[1])
    row = CheckpointRow(cid, "damaged", complete=True, written_ms=_mtime_ms(entry))
    try:
        m = store.manifest(cid)
    except CheckpointKeyError as exc:
        row.status, row.reason = "refused", _key_refusal(store, exc)
        return row, None
    except CorruptCheckpointError as exc:
        row.reason, row.size_bytes = _damage(store, exc), entry.get("size") if entry else None
        return row, None
    except CheckpointError:  # removed since the listing (retention of a running application)
        return None
    row.describe(m, entry.get("size") if entry else None)
    try:
        store.verify(m, full=full)
    except CorruptCheckpointError as exc:
        row.reason = _damage(store, exc)
        return row, m
    row.status = "valid"
    return row, m


def _quarantined(store: CheckpointStore, cid: int) -> CheckpointRow:
    """A checkpoint a restart set aside under ``damaged/``, with the reason it wrote beside it."""
    name = store.manifest_path(cid).rsplit("/", 1)[1][: -len(".json")]
    row = CheckpointRow(cid, "quarantined")
    try:
        row.reason = store.blobs.get(f"damaged/{name}.reason.txt").decode("utf-8", "replace").strip()
    except FileNotFoundError:
        row.reason = "no reason recorded"
    try:
        data = store.blobs.get(f"damaged/{name}.json")
        row.describe(Manifest.from_json_bytes(data, store.checksum), len(data))
    except (FileNotFoundError, ValueError, CheckpointError):
        pass
    return row


def _incomplete(store: CheckpointStore, skip: set[int]) -> list[CheckpointRow]:
    """Data directories that no manifest names: a checkpoint being written, or one that failed before its commit."""
    rows = []
    for cid in store.blobs.numbered("data", _DATA_DIR_RE):
        if cid in skip:
            continue
        entries = list(_listing(store, f"data/cp-{cid:010d}").values())
        row = CheckpointRow(cid, "incomplete", reason="no manifest: being written, or abandoned")
        row.size_bytes = sum(int(e.get("size") or 0) for e in entries)
        row.shards = len({str(e["name"]).rsplit("/", 1)[-1].split("-")[1] for e in entries if "shard-" in e["name"]})
        row.written_ms = max((t for e in entries if (t := _mtime_ms(e)) is not None), default=None)
        rows.append(row)
    return rows


def _data_dirs(m: Manifest) -> set[int]:
    """The ids of the ``data/cp-N`` directories whose files ``m`` needs (its own and older checkpoints')."""
    return {int(match.group(1)) for ref in m.files() if (match := re.match(r"data/cp-(\d+)/", ref.path or ""))}


def survey(store: CheckpointStore, full: bool = False) -> list[CheckpointRow]:
    """Every checkpoint under the store, oldest first, the newest valid one marked ``resume``."""
    manifests = _listing(store, "manifests")
    found = [c for cid in store.checkpoint_ids() if (c := _committed(store, cid, full, manifests)) is not None]
    rows = [row for row, _ in found]
    rows += [_quarantined(store, cid) for cid in store.quarantined_ids() if cid not in {r.id for r in rows}]
    needed = {r.id for r in rows}.union(*(_data_dirs(m) for _, m in found if m is not None))
    rows += _incomplete(store, needed)
    rows.sort(key=lambda r: r.id)
    valid = [r for r in rows if r.valid]
    if valid:
        valid[-1].resume = True
    return rows


def human_size(n: int | None) -> str:
    """Bytes for people: ``512 B``, ``12.3 KiB``, ``1.0 GiB``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def _align(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows as lines of columns two spaces apart (numbers right-aligned, the last column not padded)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    right = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers).rstrip(), *(line(r).rstrip() for r in rows)]


def _checkpoint_lines(rows: list[CheckpointRow], full: bool) -> list[str]:
    cells = []
    for r in rows:
        status = r.status + (f": {r.reason}" if r.reason else "") + ("  <- resume" if r.resume else "")
        shards = "-" if r.shards is None else str(r.shards)
        groups = "-" if r.key_groups is None else str(r.key_groups)
        cells.append([str(r.id), _utc(r.written_ms) or "-", human_size(r.size_bytes), shards, groups, status])
    lines = _align(["ID", "WRITTEN (UTC)", "SIZE", "SHARDS", "KEY GROUPS", "STATUS"], cells, right=(0, 2, 3, 4))
    resume = next((r.id for r in rows if r.resume), None)
    if resume is None and any(r.status == "refused" for r in rows):
        lines.append(f"no checkpoint could be checked without its key: pass --key-file (or set ${KEY_ENV})")
    elif resume is None:
        lines.append("no valid checkpoint: a restart starts with empty state")
    else:
        lines.append(f"a restart resumes from checkpoint {resume}")
    if resume is not None and not full:
        lines[-1] += " (files checked by size; --full checks their digests too)"
    return lines


@click.command("checkpoints")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--full", is_flag=True, help="Read every file and check its digest (else: sizes, from a listing).")
@_storage_arguments
def checkpoints(url: str, fmt: str, full: bool, storage_option: tuple[str, ...], key_file: str | None) -> None:
    """List the checkpoints under URL: when written, size, shards, whether each is valid, where a restart
    resumes. JSON: one object per line."""
    rows = survey(_open_storage(url, storage_option, key_file).store, full=full)
    if not rows:
        raise CliError(f"no checkpoints in {url}")
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps(r.to_json(), ensure_ascii=False))
    else:
        click.echo("\n".join(_checkpoint_lines(rows, full)))


# --------------------------------------------------------------------------------------------------------
# rayfun state


@dataclass(frozen=True)
class Raw:
    """A value of a type this process cannot decode (not built in, not UTF-8 JSON): its bytes."""

    typename: str
    data: bytes


@dataclass
class Instance:
    """One function instance: its address and its state values, decoded where the type is known."""

    function_type: str
    id: str
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able: undecoded values as ``{"typename": ..., "base64": ...}``."""
        return {
            "function_type": self.function_type,
            "id": self.id,
            "state": {k: _jsonable(v) for k, v in self.state.items()},
        }


def _decode(row: dict[str, Any]) -> Any:
    """A built-in value from its typed column; any other the JSON it holds (``make_json_type``), else Raw."""
    if row["value_typename"] in BUILTIN_TYPES:
        return next((row[c] for c in _TYPED_COLUMNS if row[c] is not None), None)
    try:
        return json.loads(row["value"].decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        return Raw(row["value_typename"], row["value"])


def instances(table: pa.Table) -> list[Instance]:
    """``read_state`` rows (one per value, sorted by type and id) gathered into one Instance each."""
    out: list[Instance] = []
    for row in table.select(
        ["function_type", "id", "state_name", "value_typename", "value", *_TYPED_COLUMNS]
    ).to_pylist():
        if not out or out[-1].function_type != row["function_type"] or out[-1].id != row["id"]:
            out.append(Instance(row["function_type"], row["id"]))
        out[-1].state[row["state_name"]] = _decode(row)
    return out


def _read_checkpoint(storage: Storage, cid: int, types: Sequence[str]) -> tuple[pa.Table, Manifest]:
    """The state of checkpoint ``cid``: every file checked by size first, the state files by digest as read."""
    m = storage.store.manifest(cid)
    storage.store.verify(m)
    table = read_state(
        storage.url,
        checkpoint_id=cid,
        function_types=types or None,
        storage_options=storage.options,
        key=storage.key,
    )
    return table, m


def _newest_readable(storage: Storage, types: Sequence[str]) -> tuple[pa.Table, Manifest]:
    """The newest checkpoint that reads cleanly (what a restart would load); each one skipped is said on stderr."""
    store, url = storage.store, storage.url
    ids = store.checkpoint_ids()
    if not ids:
        raise CliError(f"no checkpoints in {url}")
    for cid in reversed(ids):
        try:
            return _read_checkpoint(storage, cid, types)
        except CorruptCheckpointError as exc:
            click.echo(f"rayfun: checkpoint {cid} is damaged: {_damage(store, exc)}; trying an older one", err=True)
        except CheckpointKeyError as exc:
            raise CliError(f"checkpoint {cid}: {_key_refusal(store, exc)}") from None
        except CheckpointError:  # removed since the listing (retention of a running application)
            continue
    raise CliError(f"no valid checkpoint in {url} (see: rayfun checkpoints {url})")


def _load(storage: Storage, cid: int | None, types: Sequence[str]) -> tuple[pa.Table, Manifest]:
    if cid is None:
        return _newest_readable(storage, types)
    try:
        return _read_checkpoint(storage, cid, types)
    except CorruptCheckpointError as exc:
        raise CliError(f"checkpoint {cid} is damaged: {_damage(storage.store, exc)}") from None
    except CheckpointKeyError as exc:
        raise CliError(f"checkpoint {cid}: {_key_refusal(storage.store, exc)}") from None
    except CheckpointError as exc:  # no such checkpoint
        raise CliError(str(exc)) from None


def _nothing_matched(m: Manifest, types: Sequence[str], ids: Sequence[str]) -> CliError:
    asked = " and ".join(
        part for part in (" or ".join(f"--type {t}" for t in types), " or ".join(f"--id {i}" for i in ids)) if part
    )
    known = f" (its function types: {', '.join(sorted(m.layouts)) or 'none'})" if types else ""
    return CliError(f"nothing matched {asked} in checkpoint {m.checkpoint_id}{known}")


def _cell(value: Any) -> str:
    """A value as one table cell: plain text, control characters escaped, cut at CELL_WIDTH."""
    if value is None:
        text = ""
    elif isinstance(value, Raw):
        text = "0x" + value.data.hex()
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = _CONTROL.sub(lambda c: c.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _state_names(function_type: str, rows: list[Instance], m: Manifest) -> list[str]:
    """The state names of a function type in declared order, then any the layout does not name."""
    declared = [spec["name"] for spec in m.layouts.get(function_type, [])]
    seen = {name for inst in rows for name in inst.state}
    return declared + sorted(seen - set(declared))


def _by_type(found: list[Instance]) -> dict[str, list[Instance]]:
    by_type: dict[str, list[Instance]] = {}
    for inst in found:
        by_type.setdefault(inst.function_type, []).append(inst)
    return by_type


def _state_lines(found: list[Instance], m: Manifest) -> list[str]:
    """One aligned block per function type (their state names differ), blank lines between them."""
    by_type = _by_type(found)
    lines = [
        f"checkpoint {m.checkpoint_id} (written {_utc(m.created_ms)} UTC): "
        f"{len(found)} instance{'s' * (len(found) != 1)} of {len(by_type)} function type{'s' * (len(by_type) != 1)}"
    ]
    for function_type, rows in by_type.items():
        names = _state_names(function_type, rows, m)
        cells = [[inst.function_type, _cell(inst.id), *(_cell(inst.state.get(n)) for n in names)] for inst in rows]
        numeric = [
            2 + i
            for i, n in enumerate(names)
            if all(isinstance(inst.state.get(n), (int, float, type(None))) for inst in rows)
        ]
        lines += ["", *_align(["TYPE", "ID", *names], cells, right=numeric)]
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, Raw):
        return {"typename": value.typename, "base64": base64.b64encode(value.data).decode("ascii")}
    return value


def _json_line(inst: Instance) -> str:
    return json.dumps(inst.to_json(), ensure_ascii=False)


def _arrow_column(values: list[Any]) -> pa.Array:
    """A typed column where the values agree (int, float, str, bool, bytes), else JSON text."""
    kinds = {"raw" if isinstance(v, Raw) else type(v).__name__ for v in values if v is not None}
    if not kinds or kinds == {"str"}:
        return pa.array(values, pa.string())
    if kinds == {"bool"}:
        return pa.array(values, pa.bool_())
    if kinds == {"int"}:
        return pa.array(values, pa.int64())
    if kinds <= {"int", "float"}:
        return pa.array(values, pa.float64())
    if kinds == {"raw"}:
        return pa.array([v.data if v is not None else None for v in values], pa.binary())
    return pa.array([None if v is None else json.dumps(_jsonable(v), ensure_ascii=False) for v in values], pa.string())


def instances_table(found: list[Instance], m: Manifest) -> pa.Table:
    """One row per instance: ``function_type``, ``id``, then a column per state name (``state.NAME`` where a
    state is itself called ``function_type`` or ``id``); the checkpoint id in the schema metadata."""
    names: dict[str, None] = {}  # the union, in order
    for function_type, rows in _by_type(found).items():
        names.update(dict.fromkeys(_state_names(function_type, rows, m)))
    columns: dict[str, pa.Array] = {
        "function_type": pa.array([i.function_type for i in found], pa.string()),
        "id": pa.array([i.id for i in found], pa.string()),
    }
    for name in names:
        column = f"state.{name}" if name in ("function_type", "id") else name
        columns[column] = _arrow_column([inst.state.get(name) for inst in found])
    table = pa.table(columns)
    return table.replace_schema_metadata({b"rayfun.checkpoint_id": str(m.checkpoint_id).encode()})


def _parquet_target(output: str | None) -> str:
    """Where Parquet may go: a file, or stdout when it is not a terminal (binary would garble it)."""
    if output is None:
        raise click.UsageError("--format parquet needs --output FILE (or --output - with stdout not a terminal)")
    if output == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write Parquet to a terminal: pass --output FILE, or pipe stdout")
    return output


def _write_parquet(table: pa.Table, output: str) -> None:
    import pyarrow.parquet as pq

    with click.open_file(output, "wb") as f:
        pq.write_table(table, f)


def _write_text(lines: Iterable[str], output: str | None) -> None:
    with click.open_file(output or "-", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


@click.command("state")
@click.option(
    "--checkpoint", "checkpoint_id", type=int, metavar="ID", help="Read this checkpoint (default: the newest valid)."
)
@click.option(
    "--type", "types", multiple=True, metavar="TYPE", help="Only instances of this function type (repeatable)."
)
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only instances with this id (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "parquet"]), default="table", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE (required for parquet; - is stdout).",
)
@_storage_arguments
def state(
    url: str,
    checkpoint_id: int | None,
    types: tuple[str, ...],
    ids: tuple[str, ...],
    fmt: str,
    output: str | None,
    storage_option: tuple[str, ...],
    key_file: str | None,
) -> None:
    """Show the function state in a checkpoint under URL: one row per instance (type, id, each state value).

    Built-in values and UTF-8 JSON values are decoded; other values are shown as bytes (hex in the table,
    base64 in JSON). JSON: one object per line. Exit 1 when --type/--id match nothing.
    """
    if fmt == "parquet":
        _parquet_target(output)  # refused before anything is read
    table, m = _load(_open_storage(url, storage_option, key_file), checkpoint_id, types)
    if ids:
        table = table.filter(pc.is_in(table["id"], value_set=pa.array(list(ids), pa.string())))
    found = instances(table)
    if not found and (types or ids):
        raise _nothing_matched(m, types, ids)
    if not found:
        click.echo(f"rayfun: checkpoint {m.checkpoint_id} holds no state", err=True)
    if fmt == "parquet":
        _write_parquet(instances_table(found, m), _parquet_target(output))
        if output != "-":
            click.echo(f"rayfun: wrote {len(found)} instances of checkpoint {m.checkpoint_id} to {output}", err=True)
    elif fmt == "json":
        _write_text(map(_json_line, found), output)
    elif found:
        _write_text(_state_lines(found, m), output)


COMMANDS: list[click.Command] = [checkpoints, state]
