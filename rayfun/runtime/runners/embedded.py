"""Running embedded (in-shard) Python functions: one invocation at a time per address, many addresses at once.

This is the hot path. A sync function runs inline, with no task or future per message. An ``async def``
function runs as an asyncio task; while it is suspended, later messages for the same address wait in a
per-address queue (arrival order), while other addresses proceed.

An invocation works on a copy of the instance's cells and collects its effects in the Context; only when
it returns are they committed (state, then sends, timers, egress) by the shard. If it raises, nothing is
committed and the message is dead-lettered with the error: it is neither lost nor half-applied.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ...context import Context, explain_state_error, make_slot_storage_class, make_storage_class
from ...functions import FunctionSpec
from ...messages import Message
from ...types import BUILTIN_TYPES, MAX_VALUE_BYTES

if TYPE_CHECKING:
    from ..services import RunnerServices

__all__ = ["EmbeddedFunction", "FunctionState"]


class FunctionState:
    """All instances of one function type on one shard, plus which changed since the last checkpoint
    snapshot, with their new cells (None: gone): what the checkpoint encoder reads (see ``StateDelta``), so
    a snapshot looks no id up.

    ``instances`` maps ``id -> cells``, except for a single-cell type (``single``: one value that never
    expires, the common case), which maps ``id -> the value itself`` and records its changes as values:
    no list to allocate at every write and one pointer less to follow at every read (a list per instance
    cost ~150 ns a message, measured over 10k instances). Code that wants cells whatever the type uses
    ``cells_of``, ``working_cells`` and ``put``."""

    def __init__(self, typename: str, specs) -> None:
        self.typename = typename
        self.specs = tuple(specs)
        self.n = len(self.specs)
        self.expiring = any(s.expire_mode for s in self.specs)
        self.width = self.n * 2 if self.expiring else self.n
        # the cells of a new instance: n values (payloads, None: absent), then n expiry deadlines (ms, 0: none)
        self.empty: list[Any] = [None] * self.n + ([0] * self.n if self.expiring else [])
        self.after_call = tuple(
            (i, s.expire_after_millis) for i, s in enumerate(self.specs) if s.expire_mode == "after_call"
        )
        self.single = self.width == 1  # ``instances`` and ``changed`` hold values, not cells
        self.instances: dict[str, Any] = {}
        self.changed: dict[str, Any] = {}

    def cells_of(self, id: str) -> list | None:
        """The instance's cells (None: no instance); not to be changed in place (see ``working_cells``)."""
        held = self.instances.get(id)
        if self.single:
            return None if held is None else [held]
        return held

    def working_cells(self, id: str) -> list:
        """A fresh copy of the instance's cells (empty cells if there is none) for an invocation to change."""
        held = self.instances.get(id)
        if self.single:
            return [held]
        return held.copy() if held is not None else self.empty.copy()

    def put(self, id: str, cells: list, maybe_empty: bool = True) -> None:
        """Store an instance's cells, dropping the instance once it holds no value (idle costs nothing).
        ``maybe_empty=False`` (no value was deleted) skips the emptiness scan: the hot path."""
        if maybe_empty:
            for i in range(self.n):
                if cells[i] is not None:
                    break
            else:
                self.instances.pop(id, None)
                self.changed[id] = None
                return
        if self.single:
            self.instances[id] = self.changed[id] = cells[0]
        else:
            self.instances[id] = self.changed[id] = cells

    def cell_items(self) -> Iterator[tuple[str, list]]:
        """``(id, cells)`` of every instance (cells not to be changed in place)."""
        if self.single:
            return ((id, [value]) for id, value in self.instances.items())
        return iter(self.instances.items())

    def take_changes(self) -> dict[str, Any]:
        """The changes recorded so far (see ``changed``), handed over for good: recording starts afresh."""
        changes, self.changed = self.changed, {}
        return changes

    def expire(self, now_ms: int) -> int:
        """Drop expired values everywhere (reads already hide them; this frees memory). Returns count."""
        if not self.expiring:
            return 0
        n, dropped = self.n, 0
        for id, cells in list(self.instances.items()):
            hit = False
            for i in range(n):
                d = cells[n + i]
                if cells[i] is not None and 0 < d <= now_ms:
                    cells = cells.copy() if not hit else cells
                    cells[i], cells[n + i], hit = None, 0, True
                    dropped += 1
            if hit:
                self.put(id, cells)
        return dropped

    def view(self, id: str, now_ms: int) -> dict[str, Any]:
        """The instance's current values by state name (decoded; expired values left out)."""
        cells = self.cells_of(id)
        out: dict[str, Any] = {}
        if cells is None:
            return out
        n = self.n
        for i, spec in enumerate(self.specs):
            value = cells[i]
            if value is None or (self.expiring and 0 < cells[n + i] <= now_ms):
                continue
            if isinstance(value, (bytes, bytearray)):
                value = spec.type.serializer().deserialize(value)
            out[spec.name] = value
        return out


class EmbeddedFunction:
    """Invokes one embedded function type for the addresses of one shard."""

    def __init__(self, spec: FunctionSpec, shard: RunnerServices) -> None:
        self.typename = spec.typename
        self.fn = spec.fn
        self.is_async = spec.is_async
        self.state = FunctionState(spec.typename, spec.specs)
        self.storage_cls = make_storage_class(spec.typename, spec.specs)
        self.shard = shard
        self.known = shard.registry
        self.counts = shard.counts_of(spec.typename)
        # async functions: address -> queued (caller, value typename, payload) behind the running one
        self.busy: dict[str, deque] = {}
        self.running: dict[str, tuple] = {}
        self.uncommitted: list[dict] = []  # changes taken by snapshots not yet committed, oldest first
        self.run = self._make_run()

    # -- invocation -------------------------------------------------------------------------------------

    def _make_run(self):
        """Build ``run(rows, i, end, now_ms) -> next i``: the slot runner where the type allows it (see
        ``_make_slot_run``), else the general one."""
        run = self._make_general_run()
        if not self.is_async and self._slot_eligible():
            return self._make_slot_run(run)
        return run

    def _slot_eligible(self) -> bool:
        """One state value that never expires, of a built-in type stored as written (int, long, string,
        bool: a float is rounded as it is written, which a slot cannot do): ``SlotStorage`` can hold it."""
        specs = self.state.specs
        builtin = BUILTIN_TYPES.get(specs[0].type.typename) if len(specs) == 1 else None
        return builtin is not None and builtin.python_type is not float and not self.state.expiring

    def _make_general_run(self):
        """Build ``run(rows, i, end, now_ms) -> next i``: invoke this function for the consecutive mailbox rows
        ``rows[i:end]`` that target it, stopping at the first row for another type.

        It is a closure over everything it needs, and for a sync function it reuses one Context and one
        storage object (reset per message), because on this path attribute lookups, calls and allocations
        are most of the cost. A context and its message are only valid during their invocation.
        """
        typename = self.typename
        counts = self.counts
        if self.is_async:
            invoke_async = self._invoke_async

            def run_async(rows: list, i: int, end: int, now_ms: int) -> int:
                first = i
                while i < end:
                    ttype, id, caller, vtype, payload = rows[i]
                    if ttype != typename:
                        break
                    invoke_async(id, caller, vtype, payload, now_ms)
                    i += 1
                counts.invocations += i - first
                return i

            return run_async

        state = self.state
        instances, empty, put, single = state.instances, state.empty, state.put, state.single
        fn, commit, failed = self.fn, self._commit, self.shard.invocation_failed
        always_commit = bool(state.after_call)
        storage = self.storage_cls([], 0)
        ctx = Context(typename, "", None, storage, self.known)
        message = Message(typename, "", "", None)

        def run(rows: list, i: int, end: int, now_ms: int) -> int:
            began, first = perf_counter(), i
            storage._now = now_ms
            while i < end:
                ttype, id, caller, vtype, payload = rows[i]
                if ttype != typename:
                    break
                i += 1
                if single:  # state.working_cells, inlined
                    cells = [instances.get(id)]
                else:
                    held = instances.get(id)
                    cells = held.copy() if held is not None else empty.copy()
                storage._cells = cells
                storage.dirty = 0
                ctx._id = message.target_id = id
                ctx._caller = caller
                message.value_type_name = vtype
                message.payload = payload
                try:
                    fn(ctx, message)
                except Exception as exc:
                    ctx.sends = ctx.timers = ctx.egress = None
                    failed(typename, id, caller, vtype, payload, explain_state_error(exc, storage))
                    continue
                if always_commit or ctx.sends is not None or ctx.timers is not None or ctx.egress is not None:
                    commit(id, ctx, storage, cells, now_ms, caller, vtype, payload)
                    ctx.sends = ctx.timers = ctx.egress = None
                elif storage.dirty:
                    if storage.dirty == 1:  # the last change was a write: the instance is not empty
                        instances[id] = state.changed[id] = cells[0] if single else cells  # state.put, inlined
                    else:
                        put(id, cells)
            if i > first:  # one count and one clock reading per run of messages, not per message
                counts.invocations += i - first
                counts.timed(perf_counter() - began, i - first)
            return i

        return run

    def _make_slot_run(self, exact):
        """The runner of a sync function with one built-in, non-expiring state value: the value sits in a
        ``SlotStorage`` slot, so the function reads and writes it with no Python call, and the runner
        checks the value once the function returns, instead of the storage at every write.

        It is optimistic: anything unusual (the function raised, wrote a value that is not plainly of its
        type, read a value after deleting it) runs that one message again on ``exact``, the general runner,
        which is the reference: it raises the exact error, at the write that caused it, or commits what
        the function did. Nothing of the first run was applied (state and effects are committed only after
        the checks), so the second run sees the same state; only a function's own side effects outside
        rayfun happen twice, as in a replay after a rollback.

        Checking the value the function leaves rather than every write is more lenient in two corners, and
        nothing wrong is ever stored: a wrong value that the function overwrites or deletes before it
        returns is no error here, and None written over an absent value leaves it absent."""
        typename, counts, state = self.typename, self.counts, self.state
        instances, fn = state.instances, self.fn
        apply_effects = self._apply_effects
        builtin = BUILTIN_TYPES[state.specs[0].type.typename]
        check = builtin.check
        plain: Any = builtin.python_type  # what passes without a call of check: an int in range, ASCII text, a bool
        lo: int | None = getattr(builtin, "_lo", None)
        hi: int | None = getattr(builtin, "_hi", None)
        text = plain is str
        max_chars = MAX_VALUE_BYTES // 4
        storage = make_slot_storage_class(typename, state.specs[0])()
        ctx = Context(typename, "", None, storage, self.known)
        message = Message(typename, "", "", None)
        deleted: Any = object()

        def run(rows: list, i: int, end: int, now_ms: int) -> int:
            began, first, redone = perf_counter(), i, 0
            changed = state.changed  # only a checkpoint's cut swaps it, never during a run
            while i < end:
                ttype, id, caller, vtype, payload = rows[i]
                if ttype != typename:
                    break
                i += 1
                old = storage._value = instances.get(id)  # a single-cell type: the value itself
                ctx._id = message.target_id = id
                ctx._caller = caller
                message.value_type_name = vtype
                message.payload = payload
                value: Any
                try:
                    fn(ctx, message)
                    try:
                        value = storage._value
                    except AttributeError:  # deleted
                        value = deleted
                    if (
                        value is not old
                        and value is not deleted
                        and not (
                            type(value) is plain
                            and (lo is None or lo <= value <= hi)
                            and (not text or (len(value) <= max_chars and value.isascii()))
                        )
                    ):
                        if value is None:  # the general storage refuses it (del deletes a value)
                            raise ValueError("a state value set to None")
                        value = check(value)  # raises TypeError or ValueError for a wrong value
                except Exception:  # the function raised, or left a wrong value: the general runner says which
                    ctx.sends = ctx.timers = ctx.egress = None
                    exact(rows, i - 1, i, now_ms)
                    redone += 1
                    continue
                if (ctx.sends is not None or ctx.timers is not None or ctx.egress is not None) and not apply_effects(
                    id, ctx, now_ms, caller, vtype, payload
                ):
                    continue
                if value is old:
                    continue
                if value is deleted:
                    if old is not None:
                        del instances[id]
                    changed[id] = None  # as FunctionState.put records it
                else:
                    instances[id] = changed[id] = value
            if i > first:  # one count and one clock reading per run of messages, not per message
                counts.invocations += i - first - redone
                counts.timed(perf_counter() - began, i - first)
            return i

        return run

    def _invoke_async(self, id: str, caller: tuple[str, str] | None, vtype: str, payload: Any, now_ms: int) -> None:
        self.shard.park()
        queue = self.busy.get(id)
        if queue is not None:
            queue.append((caller, vtype, payload))
            return
        self.busy[id] = deque()
        self._start_async(id, caller, vtype, payload, now_ms)

    def _commit(self, id: str, ctx: Context, storage, cells: list, now_ms: int, caller, vtype, payload) -> None:
        state = self.state
        if state.after_call:
            n = state.n
            for i, ttl in state.after_call:
                if cells[i] is not None:
                    cells[n + i] = now_ms + ttl
                    storage.dirty = max(storage.dirty, 1)
        if not self._apply_effects(id, ctx, now_ms, caller, vtype, payload):
            return
        if storage.dirty:
            state.put(id, cells, storage.dirty == 2)

    def _apply_effects(self, id: str, ctx: Context, now_ms: int, caller, vtype, payload) -> bool:
        """Commit the invocation's sends, timers and egress records (taking them off ``ctx``). False if the
        shard refused them (e.g. a reused cancellation token): nothing was applied, the message is
        dead-lettered, and its state change must not be committed either."""
        sends, timers, egress = ctx.sends, ctx.timers, ctx.egress
        ctx.sends = ctx.timers = ctx.egress = None
        if sends or timers or egress:
            try:
                self.shard.apply_effects(self.typename, id, sends, timers, egress, now_ms)
            except Exception as exc:
                self.shard.invocation_failed(self.typename, id, caller, vtype, payload, exc)
                return False
        return True

    # -- async functions --------------------------------------------------------------------------------

    def _start_async(self, id: str, caller, vtype: str, payload: Any, now_ms: int) -> None:
        self.running[id] = (caller, vtype, payload)
        task = asyncio.get_running_loop().create_task(self._run_async(id, caller, vtype, payload, now_ms))
        self.shard.track_task(task)

    async def _run_async(self, id: str, caller, vtype: str, payload: Any, now_ms: int) -> None:
        state = self.state
        epoch = self.shard.epoch_token
        cells = state.working_cells(id)
        storage = self.storage_cls(cells, now_ms)
        ctx = Context(self.typename, id, caller, storage, self.known)
        began = perf_counter()
        try:
            await self.fn(ctx, Message(self.typename, id, vtype, payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if epoch is self.shard.epoch_token:
                self.shard.invocation_failed(
                    self.typename, id, caller, vtype, payload, explain_state_error(exc, storage)
                )
        else:
            self.counts.timed(perf_counter() - began, 1)
            if epoch is not self.shard.epoch_token:
                return  # the shard was rolled back meanwhile: this result belongs to a discarded world
            self._commit(id, ctx, storage, cells, self.shard.now_ms(), caller, vtype, payload)
        if epoch is not self.shard.epoch_token:
            return
        self.shard.unpark()
        self.running.pop(id, None)
        queue = self.busy.get(id)
        if queue:
            c, v, p = queue.popleft()
            self._start_async(id, c, v, p, self.shard.now_ms())
        else:
            self.busy.pop(id, None)
        self.shard.wake()

    # -- introspection ----------------------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        return len(self.running)

    def pending_messages(self) -> list[tuple[str, tuple | None, str, Any]]:
        """Accepted but not yet completed messages (running + queued), in per-address order."""
        out = []
        for id, (caller, vtype, payload) in self.running.items():
            out.append((id, caller, vtype, payload))
            for c, v, p in self.busy.get(id, ()):
                out.append((id, c, v, p))
        return out

    def reset(self) -> None:
        self.busy.clear()
        self.running.clear()
