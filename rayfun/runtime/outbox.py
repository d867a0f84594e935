"""Outbox: routing rows to the shard that owns their target, and sending them in batches.

Messages between shards travel in batches of rows ``(target type, target id, caller, value type,
payload)`` (see ``services.Row``): one Ray call per destination shard per flush, never one per message;
a batch of more than ``DELIVERY_INLINE_BYTES`` encoded (``batchcodec``: by column) goes in a few calls
small enough for Ray to pass inline, rather than one through its object store. Rows, not columns, in
the shard: building and iterating them is the cheapest thing in Python. Rows for this shard skip Ray
entirely: ``flush`` hands them back to the shard core for its mailbox. A busy shard
may hold a small batch back (``flush(hold=True)``) until it has ``FLUSH_ROWS`` rows or its oldest row has
waited ``FLUSH_DELAY_S``: on size or on a short timer, whichever comes first.

Each channel to a peer carries sequence numbers (the peer re-orders, see ``channels``), and checkpoint
markers go down the same channels under the same numbers. ``outstanding`` counts the batches a peer has not
accepted yet (its ``deliver`` returns once it has room) and ``in_flight`` their messages: the shard reads
its sources only while every peer is under its share of ``max_in_flight`` messages.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

from ..constants import (  # tuning knobs: constants.py
    DELIVERY_INLINE_BYTES,
    DELIVERY_MAX_CALLS,
    FLUSH_DELAY_S,
    FLUSH_ROWS,
    MAX_ID_CHARS,
    ROUTE_CACHE_MAX,
)
from ..io import DeadLetter
from ..messages import Message
from ..types import check_id, describe_record
from .batchcodec import encode_rows
from .partitioning import Partitioner
from .registry import TypeRegistry
from .services import ShardServices

log = logging.getLogger("rayfun")

__all__ = ["Outbox"]


def _id_problem(id: object) -> str | None:
    """Why ``id`` cannot address an instance (``check_id``'s words), or None if it can."""
    try:
        check_id(id, "its id")
    except ValueError as exc:
        return str(exc)
    return None


class Outbox:
    """Per-destination batches being built, and the sequence numbers and counts of each channel out."""

    def __init__(
        self, services: ShardServices, index: int, shards: int, partitioner: Partitioner, registry: TypeRegistry
    ) -> None:
        self.services = services
        self.index = index
        self.shards = shards
        self.partitioner = partitioner
        self.registry = registry
        self.route_cache: dict[str, dict[str, int]] = {}  # type -> id -> shard (kept across rollbacks)
        self.peers: list = []
        self.generation = 0
        self.rows_per_call = 4096  # rows that encode to about DELIVERY_INLINE_BYTES (learnt from each batch)
        self.reset([], 0)

    def resize(self, shards: int, partitioner: Partitioner) -> None:
        """A rescale: another shard count, so other owners (the next ``reset`` sizes the channels)."""
        self.shards = shards
        self.partitioner = partitioner
        self.route_cache.clear()

    def reset(self, peers: list, generation: int) -> None:
        """A rollback (or the start): new peers, nothing built, every channel out starts at 0."""
        n = self.shards
        self.peers = peers
        self.generation = generation
        self.out: list[list | None] = [None] * n
        self.held_since: float | None = None  # when the oldest row not sent yet to a peer was routed
        self.send_seq = [0] * n
        self.sent = [0] * n  # messages sent per destination (the coordinator compares with "received")
        self.outstanding = [0] * n  # batches sent, not accepted yet
        self.in_flight = [0] * n  # ... and their messages

    # -- routing (per message: kept flat, no calls but the partitioner's on a cache miss) ---------------

    def route(self, ttype: str, tid: str, caller: tuple[str, str] | None, vtype: str, payload: Any) -> None:
        cache = self.route_cache.get(ttype)
        if cache is None:
            cache = self.route_cache[ttype] = {}
        dest = cache.get(tid)
        if dest is None:
            if len(cache) > ROUTE_CACHE_MAX:  # bound the memory of the cache, not of the state
                cache.clear()
            dest = cache[tid] = self.partitioner.shard_of(ttype, tid)
        rows = self.out[dest]
        if rows is None:
            self.out[dest] = [(ttype, tid, caller, vtype, payload)]
            if self.held_since is None:
                self.held_since = perf_counter()
        else:
            rows.append((ttype, tid, caller, vtype, payload))

    def route_input(self, batch: list, source_id: str) -> None:
        """Route what a source partition returned: rows, Messages or DeadLetters (rows: the fast path).

        This is where a row's target is checked: its typename must be bound (once per run of rows of one
        type) and its id a valid id (once per id the route cache does not hold: every id it holds passed),
        so a source need not check either per record; a row that fails is a dead letter naming why.

        ``route``'s body is inlined in the loop (one call per message less, on the ingest path), with what
        a batch shares looked up once: the destinations' lists and their ``append``, and the route cache of
        the target type while it stays the same (a source's batch usually has one)."""
        registry, caches, out, owner = self.registry, self.route_cache, self.out, self.partitioner.shard_of
        dead_letter = self.services.dead_letter
        lists = [rows if rows is not None else [] for rows in out]
        appends = [rows.append for rows in lists]
        last_type: str | None = None
        cache: dict[str, int] = {}
        cached = cache.get
        for item in batch:
            if type(item) is tuple:
                ttype = item[0]
                tid = item[1]
                row = item
            elif isinstance(item, Message):
                ttype, tid = item.target_typename, item.target_id
                row = (ttype, tid, None, item.value_type_name, item.payload)
            elif isinstance(item, DeadLetter):
                dead_letter(item.reason, source=item.source, payload=item.payload)
                continue
            else:
                dead_letter(f"source returned {type(item).__name__}, not a Message", source=source_id)
                continue
            if ttype is not last_type:
                try:
                    known = caches.get(ttype)
                except TypeError:  # unhashable: not a typename
                    known = None
                if known is None:
                    if not isinstance(ttype, str) or ttype not in registry:
                        dead_letter(
                            f"unknown function type {describe_record(ttype)} (bound: {registry.describe()})",
                            source=source_id,
                            function=ttype,
                            id=tid,
                            value_typename=row[3],
                            payload=row[4],
                        )
                        continue
                    known = caches[ttype] = {}
                cache, cached, last_type = known, known.get, ttype
            try:
                dest = cached(tid)
            except TypeError:  # unhashable: not an id
                dest = None
            if dest is not None:
                appends[dest](row)
                continue
            if not (type(tid) is str and tid and tid.isascii() and len(tid) <= MAX_ID_CHARS):
                problem = _id_problem(tid)  # checked once per id, here, rather than per record at the source
                if problem is not None:
                    dead_letter(
                        f"record {describe_record((ttype, tid, row[4]))} cannot become a message: {problem}",
                        source=source_id,
                        function=ttype,
                        value_typename=row[3],
                        payload=row[4],
                    )
                    continue
            if len(cache) > ROUTE_CACHE_MAX:
                cache.clear()
            dest = cache[tid] = owner(ttype, tid)
            appends[dest](row)
        for dest, rows in enumerate(lists):
            if rows and out[dest] is None:
                out[dest] = rows
                if self.held_since is None:
                    self.held_since = perf_counter()

    # -- sending ------------------------------------------------------------------------------------------

    def flush(self, hold: bool = False) -> list | None:
        """Send the peers' batches; return the rows for this shard itself (None if there are none). With
        ``hold``, a batch under ``FLUSH_ROWS`` rows to a peer that has not accepted an earlier batch yet
        stays until the oldest row held has waited ``FLUSH_DELAY_S`` (Nagle's rule: a free channel gets it at
        once, a busy one a bigger batch later; under bench/latency.py's load a message to the peer waited
        a median 5.9 ms here, p99 12.4, against 5.4 and 30 ms for Ray to deliver it)."""
        local = None
        out = self.out
        if hold and self.held_since is not None and perf_counter() - self.held_since >= FLUSH_DELAY_S:
            hold = False
        held = False
        for dest in range(len(out)):
            rows = out[dest]
            if rows is None:
                continue
            if dest == self.index:
                out[dest] = None
                local = rows
                continue
            if hold and len(rows) < FLUSH_ROWS and self.outstanding[dest]:
                held = True
                continue
            out[dest] = None
            self.sent[dest] += len(rows)
            self.outstanding[dest] += 1  # a batch, however many calls carry it
            self.in_flight[dest] += len(rows)
            peer, refs = self.peers[dest], []
            for data in self._encoded(rows):
                seq = self.send_seq[dest]
                self.send_seq[dest] = seq + 1
                refs.append(peer.deliver.remote(self.index, seq, data, self.generation))
            self.services.track_task(
                asyncio.get_running_loop().create_task(self._await_delivery(dest, refs, len(rows)))
            )
        if not held:
            self.held_since = None
        return local

    def held(self) -> int:
        """Batches built for peers and not sent yet."""
        return sum(1 for dest, rows in enumerate(self.out) if rows is not None and dest != self.index)

    def _encoded(self, rows: list) -> list[bytes]:
        """``rows`` as bytes (``batchcodec``; Ray's own path for a list, msgpack then pickle per element,
        costs ~5x more), in parts of about ``DELIVERY_INLINE_BYTES`` when a few such parts hold them all."""
        per_call = self.rows_per_call
        if len(rows) <= per_call or len(rows) > per_call * DELIVERY_MAX_CALLS:
            parts = [encode_rows(rows)]
            measured = len(rows)
        else:
            parts = [encode_rows(rows[k : k + per_call]) for k in range(0, len(rows), per_call)]
            measured = per_call
        self.rows_per_call = max(16, DELIVERY_INLINE_BYTES * measured // max(len(parts[0]), 1))
        return parts

    async def _await_delivery(self, dest: int, refs: list, rows: int) -> None:
        generation = self.generation
        try:
            for ref in refs:
                await ref
        except Exception as exc:
            if generation != self.generation:
                return
            # logged once: the coordinator rolls everything back anyway
            if self.services.fail(f"shard {dest} is unreachable"):
                log.error("shard %d: delivery to shard %d failed: %s", self.index, dest, str(exc).splitlines()[0])
        finally:
            if generation == self.generation:  # a rollback reset the counters (and cancelled this task)
                self.outstanding[dest] -= 1
                self.in_flight[dest] -= rows
                self.services.wake()

    def send_markers(self, n: int) -> set[int]:
        """Marker ``n`` down every channel to a peer; returns the peers whose marker this shard awaits."""
        waiting = set()
        for dest, peer in enumerate(self.peers):
            if dest != self.index:
                seq = self.send_seq[dest]
                self.send_seq[dest] = seq + 1
                peer.deliver.remote(self.index, seq, None, self.generation, n)
                waiting.add(dest)
        return waiting

    def accepting(self, max_in_flight: int) -> bool:
        """Every peer holds fewer than its share of ``max_in_flight`` messages not accepted yet (a peer with
        none may always take one more batch, however big)."""
        share = max(1, max_in_flight // max(1, self.shards - 1))
        return all(n < share for n in self.in_flight)
