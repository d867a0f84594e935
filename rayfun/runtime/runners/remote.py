"""Running remote functions (StateFun's request-reply protocol) for the addresses of one shard.

StateFun's semantics, kept exactly: per address at most one request in flight; messages that arrive
meanwhile queue and go out together as the next batch; the request carries every registered state; the
first answer may name missing state specs (IncompleteInvocationContext), which are registered for the
function type before the same batch is sent again. An answer is applied all at once (messages, delayed
messages and cancellations, egress, then state) and only if the shard was not rolled back meanwhile.

Failures (after the endpoint's retries and call budget) follow the endpoint's ``on_failure``:
``"restart"`` (StateFun's only behaviour) fails the shard, so the coordinator rolls back to the last
checkpoint and the batch is sent again; ``"dead-letter"`` publishes each message of the batch to the
dead-letter egress with the error, the function and the endpoint, and moves on. Either way the error is
one clear line. Requests in flight at a checkpoint are part of it as unprocessed messages, so after a
restore they are sent again: a remote function may see an input twice, its effects land once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ...remote import RemoteFunctionClient, RemoteFunctionError
from ...types import type_for_typename
from ..timers import InvalidEffect
from .state import FunctionState

if TYPE_CHECKING:
    from ..services import RunnerServices

log = logging.getLogger("rayfun")

__all__ = ["RemoteFunction", "RemoteSpec"]


class _RawType:
    """Stands in for the Type of a remote state we have no Python type for: values stay bytes."""

    def __init__(self, typename: str) -> None:
        self.typename = typename

    def serializer(self):
        return self

    @staticmethod
    def deserialize(data: bytes) -> Any:
        return bytes(data)


class RemoteSpec:
    """A state spec registered by a remote function's handshake (shaped like a ValueSpec)."""

    __slots__ = ("expire_after_millis", "expire_mode", "name", "type")

    def __init__(self, name: str, typename: str, expire_mode: str | None, expire_after_millis: int):
        self.name = name
        self.type = type_for_typename(typename) or _RawType(typename)
        self.expire_mode = expire_mode
        self.expire_after_millis = int(expire_after_millis or 0)


class RemoteFunction:
    """Invokes one remote function type for the addresses of one shard."""

    def __init__(self, typename: str, endpoint, client: RemoteFunctionClient, shard: RunnerServices) -> None:
        self.typename = typename
        self.endpoint = endpoint
        self.client = client
        self.shard = shard
        self.state = FunctionState(typename, ())
        self.uncommitted: list[dict] = []  # changes taken by snapshots not yet committed, oldest first
        self.inflight: dict[str, list] = {}  # id -> the batch being sent
        self.queued: dict[str, list] = {}  # id -> messages that arrived meanwhile
        self.unsent: dict[str, list] = {}  # id -> a batch whose request has not started: it still takes messages
        self.blocked = 0  # addresses at max_num_batch_requests (backpressure)
        self.counts = shard.counts_of(typename)
        self.run = self._make_run()

    # -- state specs ------------------------------------------------------------------------------------

    def register(self, specs: list[tuple[str, str, str | None, int]]) -> None:
        """Add specs named by the function (or restored from a checkpoint); re-lay existing instances."""
        known = {s.name: s for s in self.state.specs}
        new = list(self.state.specs)
        for name, typename, mode, ttl in specs:
            spec = RemoteSpec(name, typename, mode, ttl)
            old = known.get(name)
            if old is None:
                new.append(spec)
            elif old.type.typename != spec.type.typename:
                raise RemoteFunctionError(
                    self.typename,
                    "-",
                    self.endpoint.url_for(self.typename),
                    1,
                    f"state {name!r} was registered as {old.type.typename}, the function "
                    f"now declares {spec.type.typename}",
                    retryable=False,
                )
        if len(new) == len(self.state.specs):
            return
        old_state = self.state
        self.state = FunctionState(self.typename, new)
        index = {s.name: i for i, s in enumerate(old_state.specs)}
        for id, cells in old_state.cell_items():
            fresh = self.state.empty.copy()
            for j, spec in enumerate(new):
                i = index.get(spec.name)
                if i is not None:
                    fresh[j] = cells[i]
                    if self.state.expiring and old_state.expiring:
                        fresh[self.state.n + j] = cells[old_state.n + i]
            self.state.put(id, fresh)  # as the new layout holds it (its recorded change is replaced below)
        # recorded changes hold the old layout: record the same instances again, re-laid out (what
        # ``changed`` records is what ``instances`` holds, None for an instance that is gone)
        instances = self.state.instances

        def relaid(ids) -> dict:
            return {id: instances.get(id) for id in ids}

        self.state.changed = relaid(old_state.changed)
        self.uncommitted = [relaid(changes) for changes in self.uncommitted]
        self.shard.layout_changed(self.typename)

    # -- invocation -------------------------------------------------------------------------------------

    def _make_run(self):
        typename = self.typename
        counts = self.counts

        def run(rows: list, i: int, end: int, now_ms: int) -> int:
            first = i
            while i < end:
                ttype, id, caller, vtype, payload = rows[i]
                if ttype != typename:
                    break
                i += 1
                self.invoke(id, caller, vtype, payload)
            counts.invocations += i - first
            return i

        return run

    def invoke(self, id: str, caller, vtype: str, payload: Any) -> None:
        self.shard.hold_remote()
        unsent = self.unsent.get(id)
        if unsent is not None and len(unsent) < self.endpoint.max_num_batch_requests:
            # the request has not gone out yet (it starts after this turn, or waits for a request slot):
            # the message goes with it rather than wait for its answer
            unsent.append((caller, vtype, payload))
            return
        if id in self.inflight:
            queue = self.queued.setdefault(id, [])
            queue.append((caller, vtype, payload))
            if len(queue) == self.endpoint.max_num_batch_requests:
                self.blocked += 1
            return
        self._send(id, [(caller, vtype, payload)])

    def _send(self, id: str, batch: list) -> None:
        self.inflight[id] = self.unsent[id] = batch
        self.shard.track_task(asyncio.get_running_loop().create_task(self._call(id, batch)))

    async def _call(self, id: str, batch: list) -> None:
        shard = self.shard
        epoch = shard.epoch_token

        def sent() -> None:  # from here on the batch is what the request carries
            if self.unsent.get(id) is batch:
                del self.unsent[id]

        try:
            while True:
                states = self._states(id, shard.now_ms())
                began = time.perf_counter()
                try:
                    result = await self.client.invoke(self.typename, id, states, batch, on_send=sent)
                except RemoteFunctionError as exc:
                    if epoch is not shard.epoch_token:
                        return
                    self._failed(id, batch, exc)
                    break
                self.counts.timed(time.perf_counter() - began, 1)  # remote latency: per request
                if epoch is not shard.epoch_token:
                    return  # rolled back meanwhile: this answer belongs to a discarded world
                if hasattr(result, "specs"):  # MissingStates: register, then send the same batch again
                    try:
                        self.register(result.specs)
                    except RemoteFunctionError as exc:
                        self._failed(id, batch, exc)
                        break
                    continue
                self._apply(id, result, shard.now_ms(), batch)
                break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not silently stall the address
            log.exception("remote function %s/%s: unexpected error", self.typename, id)
            if epoch is shard.epoch_token:
                shard.fail(f"remote function {self.typename}: {type(exc).__name__}: {exc}")
            return
        finally:
            sent()  # however the call ended, its batch takes no more messages
        if epoch is not shard.epoch_token:
            return
        shard.release_remote(len(batch))
        queued = self.queued.pop(id, None)
        if queued:
            if len(queued) >= self.endpoint.max_num_batch_requests:
                self.blocked -= 1
            self._send(id, queued)
        else:
            del self.inflight[id]
        shard.wake()

    def _states(self, id: str, now_ms: int) -> list[tuple[str, str, Any]]:
        state = self.state
        cells = state.cells_of(id)
        out = []
        for i, spec in enumerate(state.specs):
            value = None
            if cells is not None:
                value = cells[i]
                if value is not None and state.expiring and 0 < cells[state.n + i] <= now_ms:
                    value = None  # expired: the function sees it absent (the apply step removes it)
            out.append((spec.name, spec.type.typename, value))
        return out

    def _apply(self, id: str, result, now_ms: int, batch: list) -> None:
        shard = self.shard
        try:
            shard.apply_effects(self.typename, id, result.outgoing, result.delayed, result.egress, now_ms, strict=False)
        except InvalidEffect as exc:  # the answer cannot be applied, now or on a retry: refuse it
            self._refused(
                id,
                batch,
                RemoteFunctionError(
                    self.typename,
                    id,
                    self.endpoint.url_for(self.typename),
                    1,
                    f"answer refused: {exc}",
                    retryable=False,
                ),
            )
            return
        state = self.state
        n = state.n
        cells = state.working_cells(id)
        if state.expiring:  # drop what expired before this call
            for i in range(n):
                if cells[i] is not None and 0 < cells[n + i] <= now_ms:
                    cells[i], cells[n + i] = None, 0
        names = {s.name: i for i, s in enumerate(state.specs)}
        for name, typename, payload in result.state_mutations:
            i = names[name]  # the client validated names and typenames against what was registered
            cells[i] = None if typename is None else payload
            if state.expiring:
                spec = state.specs[i]
                cells[n + i] = (
                    now_ms + spec.expire_after_millis
                    if (typename is not None and spec.expire_mode == "after_write")
                    else (0 if typename is None else cells[n + i])
                )
        for i, ttl in state.after_call:
            if cells[i] is not None:
                cells[n + i] = now_ms + ttl
        if cells != (state.cells_of(id) or state.empty):
            state.put(id, cells)

    def _refused(self, id: str, batch: list, exc: RemoteFunctionError) -> None:
        """Dead-letter every message of the batch with the error (whatever ``on_failure`` says)."""
        line = str(exc)
        log.warning("%s; dead-lettering %d message(s)", line, len(batch))
        for caller, vtype, payload in batch:
            self.shard.dead_letter(
                line,
                function=self.typename,
                id=id,
                caller=caller,
                endpoint=self.endpoint.url_for(self.typename),
                value_typename=vtype,
                payload=payload,
            )

    def _failed(self, id: str, batch: list, exc: RemoteFunctionError) -> None:
        if self.endpoint.on_failure == "dead-letter":
            self._refused(id, batch, exc)
        else:
            line = str(exc)
            log.error("%s; rolling back to the last checkpoint (on_failure='restart')", line)
            self.shard.fail(line)

    # -- introspection ----------------------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        return len(self.inflight)

    def pending_messages(self) -> list[tuple[str, tuple | None, str, Any]]:
        """Accepted but not yet answered messages (in flight, then queued), in per-address order."""
        out: list[tuple[str, tuple | None, str, Any]] = []
        for id, batch in self.inflight.items():
            out.extend((id, c, v, p) for c, v, p in batch)
            out.extend((id, c, v, p) for c, v, p in self.queued.get(id, ()))
        return out

    def reset(self) -> None:
        self.inflight.clear()
        self.queued.clear()
        self.unsent.clear()
        self.blocked = 0
