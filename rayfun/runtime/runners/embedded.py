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
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ...context import Context, explain_state_error, make_slot_storage_class, make_storage_class
from ...functions import FunctionSpec
from ...messages import Message
from ...types import BUILTIN_TYPES, MAX_VALUE_BYTES
from .state import ColumnState, FunctionState, slot_eligible

if TYPE_CHECKING:
    from ..services import RunnerServices

__all__ = ["EmbeddedFunction"]


class EmbeddedFunction:
    """Invokes one embedded function type for the addresses of one shard."""

    def __init__(self, spec: FunctionSpec, shard: RunnerServices) -> None:
        self.typename = spec.typename
        self.fn = spec.fn
        self.is_async = spec.is_async
        # the slot runner's types are held by column (cheap checkpoints), the others as a dict of instances
        columns = not spec.is_async and slot_eligible(spec.specs)
        self.state = (ColumnState if columns else FunctionState)(spec.typename, spec.specs)
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
        if isinstance(self.state, ColumnState):
            return self._make_slot_run(run)
        return run

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
        typename, counts, fn = self.typename, self.counts, self.fn
        state = self.state
        assert isinstance(state, ColumnState)
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
            # a cut swaps ``dirty`` and squeezing replaces all three, never during a run (``new_slot`` appends
            # to them in place)
            slots, values, dirty, new_slot = state.slots, state.values, state.dirty, state.new_slot
            while i < end:
                ttype, id, caller, vtype, payload = rows[i]
                if ttype != typename:
                    break
                i += 1
                slot = slots.get(id)
                old = storage._value = None if slot is None else values[slot]
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
                    state.delete(id)  # records the tombstone, as FunctionState.put does
                    continue
                if slot is None:
                    slot = new_slot(id)
                values[slot] = value
                dirty[slot] = 1
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
