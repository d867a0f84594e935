"""CheckpointStore: checkpoints as Arrow IPC and Parquet files plus a manifest, on any fsspec URL.

Layout under the root URL (a local directory, ``s3://bucket/prefix``, ``memory://...``)::

    manifests/cp-0000000012.json                          the commit point, written last (atomically)
    data/cp-0000000012/shard-0003-<token>.state.arrow     a shard's part: state delta or base (Arrow IPC;
                                     .state.parquet       Parquet, any file past 64 MB),
                                     .timers.arrow        timers, messages, egress (full each time)
                                     .messages.arrow
                                     .egress.arrow
    compacted/cp-0000000010-<token>/range-000000-000512.state.parquet   compaction output (bases)
    compactions/cp-0000000010-<token>.json | .pending     compaction record | in-progress marker
    damaged/cp-0000000013.json, cp-0000000013.reason.txt  a quarantined manifest and why (see quarantine)

Part files are immutable and uniquely named (a random token per attempt), so they are written with one
plain PUT and never overwritten: a half-written file of a failed attempt is simply never referenced. The
manifest is written with write-temp-then-rename on a local disk and one PUT elsewhere (atomic on S3, GCS
and memory). A checkpoint without its manifest does not exist. Empty tables are not written at all (the
manifest records them with ``path=None``).

Who does what: ``blobs`` (the only fsspec user), ``datafiles`` (encode, verify, read files), ``restore``
(the fold, read a row group at a time), ``retention``, ``compaction``; this module writes parts, commits
manifests, lists, verifies and quarantines checkpoints, and assembles what a shard restores.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from .blobs import BlobStore
from .checksum import Checksum
from .compaction import CompactionResult, usable_compaction
from .datafiles import DataFiles, Encoded
from .errors import CheckpointError, CheckpointKeyError, CorruptCheckpointError
from .manifest import (
    MAX_ANCESTORS,
    FileRef,
    Manifest,
    ShardEntry,
    ShardPart,
    check_ranges,
    json_meta,
    now_ms,
    prune_chain,
)
from .records import (
    decode_egress,
    decode_messages,
    decode_timers,
    encode_egress,
    encode_messages,
    encode_timers,
)
from .restore import FoldedState, RestoredShard, StateLayer
from .retention import apply_retention
from .schema import ADDRESS_COLUMNS
from .state_codec import StateDelta, StateLayout, filter_key_groups, iter_state

log = logging.getLogger("rayfun.checkpoint")

__all__ = ["CheckpointStore", "CompactionResult", "RestoredShard"]

_MANIFEST_RE = re.compile(r"cp-(\d+)\.json$")
_DATA_DIR_RE = re.compile(r"cp-(\d+)$")


class CheckpointStore:
    """Writes, commits, lists, verifies, restores, compacts and expires checkpoints under one URL.

    One store object may be created per process (each shard actor, the coordinator): all state lives in
    the files, the object only caches parsed manifests (immutable). It pickles as its constructor arguments.

    ``compression`` is the files' codec. LZ4 by default: the shards compress while they process, and it
    costs them a third of the CPU of zstd (level 1) for about twice the bytes (measured on a 190k-row
    delta: 14 vs 45 ms); pass ``"zstd"`` where storage or bandwidth costs more than CPU. Arrow IPC knows
    only lz4, zstd and none: with another codec (snappy, gzip, brotli) every file is Parquet.
    """

    def __init__(
        self,
        url: str,
        retain: int = 3,
        storage_options: Mapping[str, Any] | None = None,
        *,
        compression: str = "lz4",
        compression_level: int | None = None,
        key: str | bytes | Checksum | None = None,
    ):
        if retain < 1:
            raise ValueError(f"retain must be >= 1, got {retain}")
        self.url = url
        self.retain = retain
        # SHA-256 digests, or HMAC-SHA256 with ``key`` (default: $RAYFUN_CHECKPOINT_KEY): see checksum.py
        self.checksum = key if isinstance(key, Checksum) else Checksum(key)
        self.storage_options = dict(storage_options or {})
        try:
            available = compression.lower() == "none" or pa.Codec.is_available(compression)
        except ValueError:  # not a codec name at all
            available = False
        if not available:
            raise ValueError(
                f"checkpoint compression {compression!r} is not available here (lz4, zstd, snappy, "
                f"gzip, brotli or none)"
            )
        self.compression = compression
        # zstd's default level costs twice its level 1 for a few percent fewer bytes
        self.compression_level = 1 if compression_level is None and compression == "zstd" else compression_level
        self.blobs = BlobStore(url, self.storage_options)
        self.files = DataFiles(self.blobs, self.checksum, self.compression, self.compression_level)
        self._manifests: dict[int, Manifest] = {}
        self._lock = threading.Lock()

    def __reduce__(self):
        return (
            _rebuild,
            (self.url, self.retain, self.storage_options, self.compression, self.compression_level, self.checksum),
        )

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r}, retain={self.retain})"

    @staticmethod
    def manifest_path(checkpoint_id: int) -> str:
        return f"manifests/cp-{checkpoint_id:010d}.json"

    # ----------------------------------------------------------------------------------------------------
    # Writing.

    def write_shard_part(
        self,
        checkpoint_id: int,
        shard_index: int,
        key_group_range: tuple[int, int],
        *,
        key_groups: int,
        state: Mapping[str, StateDelta] | Iterable[StateDelta] | pa.Table | None = None,
        state_pieces: Iterable[pa.Table] | None = None,
        parent_id: int | None = None,
        full: bool = False,
        timers: Iterable[tuple] = (),
        messages: Iterable[tuple] = (),
        egress: Iterable[tuple] = (),
        meta: dict | None = None,
        layouts: Mapping[str, StateLayout] | None = None,
    ) -> ShardPart:
        """Write one shard's part of checkpoint ``checkpoint_id`` and describe it (call inside the shard).

        ``state``: per function type a ``StateDelta`` (instances changed since checkpoint ``parent_id`` plus
        tombstones), or, with ``full=True`` or ``parent_id=None``, every live instance (a base). May also be
        a table from ``encode_state``, or ``state_pieces``: tables from ``iter_state``, written one at a time
        (then pass ``layouts``).
        ``timers``/``messages``/``egress``: row tuples (see ``records``), everything pending, in full.
        ``meta``: a JSON-able dict (source positions, channel sequence numbers, ...); restored as JSON, so
        tuples come back as lists. Nothing is visible until the coordinator commits the manifest.
        """
        start, end = key_group_range
        if not 0 <= start < end <= key_groups:
            raise CheckpointError(
                f"shard {shard_index}: key-group range {key_group_range} is not within [0, {key_groups})"
            )
        full = full or parent_id is None
        if parent_id is not None and parent_id >= checkpoint_id:
            raise CheckpointError(f"checkpoint {checkpoint_id}: parent {parent_id} must be older")
        layouts_json: dict[str, list[dict]] = {}
        state_table: pa.Table | Iterable[pa.Table]
        if state_pieces is not None:
            state_table = state_pieces
        elif isinstance(state, pa.Table):
            state_table = state
        else:
            deltas = list(state.values()) if isinstance(state, Mapping) else list(state or ())
            state_table = iter_state(deltas, None)  # key groups left to readers (see schema)
            for d in deltas:
                layouts_json[d.layout.function_type] = d.layout.to_json()
        for ft, layout in (layouts or {}).items():
            layouts_json[ft] = layout.to_json()
        token = uuid.uuid4().hex[:8]
        prefix = f"data/cp-{checkpoint_id:010d}/shard-{shard_index:04d}-{token}"
        tables = {
            "state": state_table,
            "timers": encode_timers(timers, None),  # key groups left to readers (see schema)
            "messages": encode_messages(messages, None),
            "egress": encode_egress(egress),
        }
        refs: dict[str, FileRef] = {}
        encoded: dict[str, Encoded] = {}
        try:
            for kind, table in tables.items():
                ref, data = self.files.encode(
                    kind, table, f"{prefix}.{kind}", key_group_range, checkpoint_id, shard_index, base=full
                )
                if kind == "state" and ref.rows == 0 and not full:
                    continue  # an empty delta changes nothing: no chain entry at all
                refs[kind] = ref
                if data is not None:
                    encoded[ref.stored_path] = data
            self.files.put_many(encoded)
        finally:
            self.files.discard(encoded.values())  # staged files a failure left behind
        return ShardPart(
            checkpoint_id,
            shard_index,
            (start, end),
            key_groups,
            refs,
            json_meta(meta, f"meta of shard {shard_index}"),
            parent_id,
            full,
            layouts_json,
        )

    # ----------------------------------------------------------------------------------------------------
    # Committing.

    def commit(
        self,
        checkpoint_id: int,
        parts: Sequence[ShardPart],
        *,
        key_groups: int | None = None,
        app_meta: dict | None = None,
        retain: bool = True,
    ) -> Manifest:
        """Make checkpoint ``checkpoint_id`` complete: write its manifest (last, atomically), then apply
        retention (``retain=False``: the caller does, with ``retain_quietly``, once what waits for the
        checkpoint has gone on). Call once every shard has reported its part; the parts must tile
        ``[0, key_groups)`` and their deltas share one committed parent. Retention failures are logged,
        never raised: the checkpoint is complete at that point."""
        if not parts:
            raise CheckpointError(f"checkpoint {checkpoint_id}: no shard parts to commit")
        for p in parts:
            if p.checkpoint_id != checkpoint_id:
                raise CheckpointError(
                    f"checkpoint {checkpoint_id}: got the part of shard {p.shard_index} "
                    f"for checkpoint {p.checkpoint_id}"
                )
        groups = {p.key_groups for p in parts} | ({key_groups} if key_groups is not None else set())
        if len(groups) != 1:
            raise CheckpointError(f"checkpoint {checkpoint_id}: parts disagree on key_groups: {sorted(groups)}")
        key_groups = groups.pop()
        indexes = [p.shard_index for p in parts]
        if len(set(indexes)) != len(indexes):
            raise CheckpointError(f"checkpoint {checkpoint_id}: duplicate shard parts {sorted(indexes)}")
        check_ranges([p.key_group_range for p in parts], key_groups)
        parents = {p.parent_id for p in parts if p.parent_id is not None}
        if len(parents) > 1:
            raise CheckpointError(
                f"checkpoint {checkpoint_id}: shard parts have different parents "
                f"{sorted(parents)}; all shards must restore from / build on one checkpoint"
            )
        parent_id = parents.pop() if parents else None
        if self.blobs.exists(self.manifest_path(checkpoint_id)):
            raise CheckpointError(f"checkpoint {checkpoint_id} is already committed")
        parts = sorted(parts, key=lambda p: p.shard_index)
        parent: Manifest | None = None
        if parent_id is not None:
            try:
                parent = self.manifest(parent_id)
            except CheckpointError as exc:
                if not all(p.full for p in parts):
                    raise CheckpointError(
                        f"checkpoint {checkpoint_id}: the state deltas build on checkpoint {parent_id}, which "
                        f"cannot be read ({exc}); write full parts instead"
                    ) from exc
                log.warning(
                    "checkpoint %d: parent %d unreadable (%s); all parts are full, committing anyway",
                    checkpoint_id,
                    parent_id,
                    exc,
                )
            if parent is not None and parent.key_groups != key_groups:
                raise CheckpointError(
                    f"checkpoint {checkpoint_id}: key_groups {key_groups} differs from "
                    f"parent {parent_id}'s {parent.key_groups}"
                )

        chain = list(parent.state_chain) if parent is not None else []
        chain += [p.files["state"] for p in parts if "state" in p.files]
        layouts = dict(parent.layouts) if parent is not None else {}
        for p in parts:
            layouts.update(p.layouts)
        ancestors = (parent_id, *(parent.ancestors if parent else ()))[:MAX_ANCESTORS] if parent_id is not None else ()
        compacted_through = parent.compacted_through if parent is not None else None
        spliced = usable_compaction(self, ancestors, compacted_through)
        if spliced is not None:
            chain = list(spliced.files) + [f for f in chain if f.checkpoint_id > spliced.source]
            compacted_through = spliced.source
        chain = prune_chain(chain)
        manifest = Manifest(
            checkpoint_id=checkpoint_id,
            created_ms=now_ms(),
            key_groups=key_groups,
            shards=tuple(
                ShardEntry(p.shard_index, p.key_group_range, {k: f for k, f in p.files.items()}, p.meta) for p in parts
            ),
            state_chain=tuple(chain),
            layouts=layouts,
            parent_id=parent_id,
            ancestors=tuple(ancestors),
            compacted_through=compacted_through,
            app=json_meta(app_meta, "app_meta"),
        )
        self.blobs.put_atomic(self.manifest_path(checkpoint_id), manifest.to_json_bytes(self.checksum))
        with self._lock:
            self._manifests[checkpoint_id] = manifest
        if retain:
            self.retain_quietly(checkpoint_id)
        return manifest

    def retain_quietly(self, checkpoint_id: int) -> None:
        """Retention after checkpoint ``checkpoint_id``'s commit: a failure is logged, never raised (the
        checkpoint is complete; a failed cleanup is retried at the next commit)."""
        try:
            self.apply_retention()
        except Exception:
            log.exception("checkpoint %d: retention failed (will retry at the next commit)", checkpoint_id)

    # ----------------------------------------------------------------------------------------------------
    # Listing and verifying.

    def checkpoint_ids(self) -> list[int]:
        """Ids of the checkpoints that have a manifest, ascending (not yet checked to parse)."""
        ids = []
        for p in self.blobs.ls("manifests"):
            m = _MANIFEST_RE.search(p)
            if m:
                ids.append(int(m.group(1)))
        return sorted(ids)

    def next_checkpoint_id(self) -> int:
        """An id newer than every manifest present, damaged and quarantined ones included (an id is never
        used twice: its files and its egress epoch must stay its own)."""
        ids = self.checkpoint_ids() + self.quarantined_ids()
        data = self.blobs.numbered("data", _DATA_DIR_RE)
        return max(ids + data, default=0) + 1

    def quarantined_ids(self) -> list[int]:
        """Ids of the checkpoints set aside as damaged (``quarantine``), ascending."""
        return self.blobs.numbered("damaged", _MANIFEST_RE)

    def quarantine(self, checkpoint_id: int, reason: str) -> None:
        """Set a damaged checkpoint aside: its manifest moves to ``damaged/`` with the reason beside it, so
        no restore picks it again and retention no longer counts it (its files become garbage unless a
        retained checkpoint references them). Kept, not deleted, for an operator to look at."""
        rel = self.manifest_path(checkpoint_id)
        name = rel.rsplit("/", 1)[1]
        try:
            data = self.blobs.get(rel)
        except FileNotFoundError:
            data = None
        if data is not None:
            self.blobs.put(f"damaged/{name}", data)
        self.blobs.put(f"damaged/{name[: -len('.json')]}.reason.txt", reason.encode("utf-8"))
        if data is not None:
            self.blobs.delete([rel])
        with self._lock:
            self._manifests.pop(checkpoint_id, None)
        log.error("checkpoint %d quarantined to %s: %s", checkpoint_id, self.blobs.abs("damaged"), reason)

    def manifest(self, checkpoint_id: int) -> Manifest:
        """The parsed, self-checked manifest; CheckpointError if absent, CorruptCheckpointError if bad."""
        with self._lock:
            cached = self._manifests.get(checkpoint_id)
        if cached is not None:
            return cached
        rel = self.manifest_path(checkpoint_id)
        try:
            data = self.blobs.get(rel)
        except FileNotFoundError:
            raise CheckpointError(
                f"checkpoint {checkpoint_id} does not exist (no manifest {self.blobs.abs(rel)})"
            ) from None
        try:
            manifest = Manifest.from_json_bytes(data, self.checksum)
        except ValueError as exc:
            raise CorruptCheckpointError(self.blobs.abs(rel), "unreadable", str(exc), checkpoint_id) from None
        if manifest.checkpoint_id != checkpoint_id:
            raise CorruptCheckpointError(
                self.blobs.abs(rel), "unreadable", f"holds checkpoint {manifest.checkpoint_id}", checkpoint_id
            )
        with self._lock:
            self._manifests[checkpoint_id] = manifest
        return manifest

    def manifests(self, before: int | None = None) -> Iterable[Manifest]:
        """Complete checkpoints newest first (optionally only ids < ``before``); unreadable manifests are
        logged and skipped."""
        for cid in reversed(self.checkpoint_ids()):
            if before is not None and cid >= before:
                continue
            try:
                yield self.manifest(cid)
            except CheckpointKeyError:
                raise  # another key, or none: not a checkpoint to skip silently
            except CheckpointError as exc:
                log.error("checkpoint %d skipped: %s", cid, exc)

    def latest(self, before: int | None = None) -> Manifest | None:
        """The newest complete checkpoint whose manifest parses, or None."""
        return next(iter(self.manifests(before)), None)

    def verify(self, checkpoint: Manifest | int, full: bool = False) -> None:
        """Raise CorruptCheckpointError for the first file that is missing or has the wrong size (and, with
        ``full``, the wrong checksum or unparseable content). Sizes come from one listing per directory."""
        m = self.as_manifest(checkpoint)
        refs = m.files()
        if full:
            self.files.read_many(refs, m.checkpoint_id)
            return
        by_dir: dict[str, list[tuple[str, FileRef]]] = {}
        for ref in refs:
            path = ref.stored_path
            by_dir.setdefault(path.rsplit("/", 1)[0], []).append((path, ref))
        for d, dir_refs in by_dir.items():
            sizes = {self.blobs.rel(e["name"]): e.get("size") for e in self.blobs.ls(d, detail=True)}
            for path, ref in dir_refs:
                if path not in sizes:
                    raise CorruptCheckpointError(self.blobs.abs(path), "missing", checkpoint_id=m.checkpoint_id)
                if sizes[path] != ref.size:
                    raise CorruptCheckpointError(
                        self.blobs.abs(path),
                        "size mismatch",
                        f"{sizes[path]} bytes, manifest says {ref.size}",
                        m.checkpoint_id,
                    )

    def latest_valid(self, before: int | None = None, full: bool = False, quarantine: bool = False) -> Manifest | None:
        """The newest complete checkpoint that passes ``verify`` (each failure logged), or None. This is
        what a coordinator restores; a shard that still finds a checksum mismatch while loading raises
        CorruptCheckpointError, and the coordinator then asks again with ``before=`` that checkpoint.
        With ``quarantine``, a checkpoint found damaged twice in a row (a glitch of the storage must not
        cost a good checkpoint) is set aside (``quarantine``)."""
        for cid in reversed(self.checkpoint_ids()):
            if before is not None and cid >= before:
                continue
            try:
                m = self.manifest(cid)
                self.verify(m, full=full)
                return m
            except CorruptCheckpointError as exc:
                log.error("checkpoint %d is damaged, falling back to an older one: %s", cid, exc)
                if quarantine and self._still_damaged(cid, full):
                    self.quarantine(cid, str(exc))
            except CheckpointKeyError as exc:
                raise CheckpointKeyError(f"checkpoint {cid} in {self.url}: {exc}") from None
            except CheckpointError as exc:  # the manifest vanished meanwhile (retention)
                log.error("checkpoint %d skipped: %s", cid, exc)
        return None

    def _still_damaged(self, checkpoint_id: int, full: bool) -> bool:
        with self._lock:
            self._manifests.pop(checkpoint_id, None)  # read it again, not from the cache
        try:
            self.verify(self.manifest(checkpoint_id), full=full)
        except CorruptCheckpointError:
            return True
        except CheckpointError:  # gone meanwhile, or a key error: not damage
            return False
        return False

    def as_manifest(self, checkpoint: Manifest | int) -> Manifest:
        return checkpoint if isinstance(checkpoint, Manifest) else self.manifest(int(checkpoint))

    # ----------------------------------------------------------------------------------------------------
    # Reading.

    def load_shard(
        self,
        checkpoint: Manifest | int,
        key_group_range: tuple[int, int] | None = None,
        *,
        tables: Sequence[str] = ("state", "timers", "messages", "egress"),
    ) -> RestoredShard:
        """Everything a shard owning ``key_group_range`` (default: all) restores from ``checkpoint``: the
        folded state chain, timers and messages filtered to the range, the egress of the old shards it
        inherits, and the metas of the old shards that overlap. Verifies every file it reads; raises
        CorruptCheckpointError naming the first bad one."""
        m = self.as_manifest(checkpoint)
        rng = key_group_range or (0, m.key_groups)
        start, end = rng
        if not 0 <= start < end <= m.key_groups:
            raise CheckpointError(
                f"key-group range {rng} is not within [0, {m.key_groups}) of checkpoint {m.checkpoint_id}"
            )
        overlapping = m.shards_overlapping(rng)
        egress_owners = [s for s in m.shards if start <= s.key_group_range[0] < end]
        chain = (
            [r for r in m.state_chain if r.key_group_range[0] < end and start < r.key_group_range[1]]
            if "state" in tables
            else []
        )
        # small state files are read whole (concurrently, with the other kinds); big ones row group by row
        # group from a local file (see restore.py)
        small = [r for r in chain if r.path is not None and not self.files.streamed(r)]
        wanted: list[FileRef] = list(small)
        for kind in ("timers", "messages"):
            if kind in tables:
                wanted += [s.files[kind] for s in overlapping if kind in s.files and s.files[kind].path]
        if "egress" in tables:
            wanted += [s.files["egress"] for s in egress_owners if "egress" in s.files and s.files["egress"].path]
        read = self.files.read_many(wanted, m.checkpoint_id)
        layers = []
        try:
            for r in chain:
                if r.path is None:
                    continue
                if r.path in read:
                    layers.append(StateLayer.of_table(read.pop(r.path), rng, m.key_groups, r.key_group_range))
                else:
                    layers.append(self.files.state_layer(r, m.checkpoint_id, rng, m.key_groups))
            state = FoldedState(layers)
        except BaseException:
            for layer in layers:
                layer.close()
            raise

        def gather(kind: str, shards: list[ShardEntry], ranged: bool) -> pa.Table | None:
            refs = [s.files[kind] for s in shards if kind in s.files and s.files[kind].path is not None]
            if not refs:
                return None
            if ranged:
                return pa.concat_tables(
                    [
                        filter_key_groups(
                            read[r.stored_path], rng, m.key_groups, r.key_group_range, ADDRESS_COLUMNS[kind]
                        )
                        for r in refs
                    ]
                )
            return pa.concat_tables([read[r.stored_path] for r in refs])

        timers = gather("timers", overlapping, True) if "timers" in tables else None
        timer_rows = decode_timers(timers) if timers is not None else []
        if sum(1 for s in overlapping if s.files.get("timers") is not None and s.files["timers"].path) > 1:
            # timers of several old shards: their per-shard sequence numbers may collide, so renumber
            # them in firing order (due time, then old sequence)
            timer_rows = [(t[0], i, *t[2:]) for i, t in enumerate(timer_rows)]
        messages = gather("messages", overlapping, True) if "messages" in tables else None
        egress = gather("egress", egress_owners, False) if "egress" in tables else None
        return RestoredShard(
            checkpoint_id=m.checkpoint_id,
            key_group_range=(start, end),
            key_groups=m.key_groups,
            state=state,
            chain_rows=state.chain_rows,
            layouts={ft: StateLayout.from_json(ft, specs) for ft, specs in m.layouts.items()},
            timers=timer_rows,
            messages=decode_messages(messages) if messages is not None else [],
            egress=decode_egress(egress) if egress is not None else [],
            metas={s.index: s.meta for s in overlapping},
            app=m.app,
        )

    def load_latest_valid(
        self,
        key_group_range: tuple[int, int] | None = None,
        *,
        before: int | None = None,
        tables: Sequence[str] = ("state", "timers", "messages", "egress"),
    ) -> RestoredShard | None:
        """``load_shard`` of the newest checkpoint that loads cleanly: on CorruptCheckpointError (logged,
        naming the file and cause) fall back to the previous complete checkpoint. None if none loads."""
        for m in self.manifests(before):
            try:
                return self.load_shard(m, key_group_range, tables=tables)
            except CorruptCheckpointError as exc:
                log.error("checkpoint %d cannot be restored, falling back to an older one: %s", m.checkpoint_id, exc)
        return None

    def read_state_table(self, checkpoint: Manifest | int) -> pa.Table:
        """The full folded state of a checkpoint (``STATE_SCHEMA`` rows, no tombstones)."""
        return self.load_shard(checkpoint, tables=("state",)).state.table()

    def compact(self, checkpoint: Manifest | int | None = None) -> CompactionResult | None:
        """Fold the state chain of ``checkpoint`` (default: the newest) into one base per shard range; the
        next ``commit`` that descends from it references the bases instead of the chain. Safe to run in a
        background thread or another process while checkpoints go on. None if there is nothing to fold."""
        from .compaction import compact

        return compact(self, checkpoint)

    # ----------------------------------------------------------------------------------------------------
    # Retention.

    def apply_retention(self) -> list[str]:
        """Keep the newest ``retain`` manifests and what they reference (see retention.py); returns the
        deleted paths (relative)."""
        return apply_retention(self)

    def forget(self, checkpoint_ids: Iterable[int]) -> None:
        """Drop cached manifests (of checkpoints deleted or set aside)."""
        with self._lock:
            for i in checkpoint_ids:
                self._manifests.pop(i, None)


def _rebuild(url, retain, storage_options, compression, compression_level, checksum) -> CheckpointStore:
    return CheckpointStore(
        url, retain, storage_options, compression=compression, compression_level=compression_level, key=checksum
    )
