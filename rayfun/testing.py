"""Unit-testing functions in-process, without Ray, on a virtual clock: ``rayfun.testing.Harness``.

A test builds a ``Harness`` from the same ``StatefulFunctions`` it passes to ``rayfun.start``, sends
messages, runs them, moves the clock, and reads state, egress records and dead letters::

    h = Harness(functions, start=datetime(2024, 1, 1, tzinfo=timezone.utc))
    h.send("fraud/counter", "acct-1", {"account": "acct-1"}, value_type=ConfirmFraud)
    h.run()                     # everything due now, to the end (messages between functions included)
    h.advance(days=31)          # delayed messages and state expiry of the next 31 days, in due order
    assert h.state("fraud/counter", "acct-1") == {}

What runs is rayfun's own code, not a model of it: the shard's embedded runner (storage, typed
serialization, expiry, the commit-on-return rule), its effects stage (validation of delayed messages and
cancellation tokens, dead letters) and its timer store. The harness only replaces what a shard does with
Ray and the wall clock: it keeps one FIFO queue of messages and a clock that moves only when told.

Edge cases worth knowing:

- Order: messages run one at a time in the order they were sent (a function's sends go to the back of the
  queue when it returns). That is one of the orders the runtime may choose (it keeps the order between
  any sender and receiver, not across senders), so a function that is correct here may still rely on an
  order the runtime does not promise across senders.
- ``async def`` functions run to completion on the harness's own event loop before the next message
  runs. What they await runs for real: ``asyncio.sleep(1)`` takes a second, a network call goes out (stub
  it, e.g. with pytest's ``monkeypatch``). ``run`` and ``advance`` may not be called from a running event
  loop (an ``async`` test): call them from a plain test function.
- A function that raises: by default ``run``/``advance`` raise ``FunctionError`` naming the instance and
  the message, with the function's exception as its cause; nothing of that invocation is applied and the
  rest of the queue stays queued. ``on_error="dead_letter"`` dead-letters the message instead, as the
  runtime does (read them with ``dead_letters()``).
- Egress records are kept in memory per egress id, at once (no checkpoint holds them back).
- Remote (HTTP) function types are out of scope: passing ``endpoints`` raises ``RayfunError`` naming them,
  and a function that sends to a type no function is bound to fails as it would at runtime.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

from .errors import RayfunError
from .functions import StatefulFunctions
from .io import DEAD_LETTER_EGRESS
from .messages import Address, EgressMessage, Message, to_message
from .runtime.effects import Effects
from .runtime.egress_collector import EgressCollector
from .runtime.metrics import FunctionCounts
from .runtime.registry import TypeRegistry
from .runtime.runners.embedded import EmbeddedFunction
from .runtime.timers import Timers
from .types import Type, display_value

__all__ = ["DEFAULT_START", "FunctionError", "Harness", "Invocation"]

#: where the virtual clock starts unless told otherwise: a fixed instant, so tests do not depend on the day.
DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)

_COUNTERS = ("dead_letters", "egress", "timers_fired", "processed")


class FunctionError(RayfunError):
    """A function raised (or asked for an effect that cannot be applied) while the harness ran it.

    ``address`` is the instance, ``caller`` the sender (None: sent by the test), ``value_typename`` and
    ``value`` the message; the function's own exception is ``__cause__``."""

    def __init__(self, message: str, address: Address, caller: Address | None, value_typename: str, value: Any):
        super().__init__(message)
        self.address = address
        self.caller = caller
        self.value_typename = value_typename
        self.value = value


class Invocation(NamedTuple):
    """One message a function was invoked with, in the order the harness ran them."""

    at: datetime
    address: Address
    caller: Address | None
    value_typename: str
    value: Any  # decoded where the type is known (as ``App.egress`` shows records)


class _Shard:
    """The harness's side of ``RunnerServices``: what the embedded runners ask of their shard, answered
    in-process. Effects go through the shard's own ``Effects`` stage; routing appends to one FIFO queue."""

    def __init__(self, functions: StatefulFunctions, clock_ms: int, on_error: str) -> None:
        self.registry = TypeRegistry(functions.typenames)
        self.epoch_token = object()  # never replaced: the harness does not roll back
        self.clock = clock_ms
        self.on_error = on_error
        self.queue: deque[tuple] = deque()
        self.collector = EgressCollector()
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.tasks: set[asyncio.Task] = set()
        self.failure: tuple | None = None  # (typename, id, caller, vtype, payload, exc) in "raise" mode
        self.timers = Timers(self, self.route, self.counters)  # fired on the virtual clock: never armed
        self.functions: dict[str, FunctionCounts] = {}
        self.effects = Effects(
            self.registry, self.route, self.timers.service, self._no_schedule, self.emit, self.counters, self.counts_of
        )
        self.apply_effects = self.effects.apply
        self.dead_letter = self.effects.dead_letter

    def counts_of(self, typename: str) -> FunctionCounts:
        counts = self.functions.get(typename)  # not setdefault: that would make a FunctionCounts per call
        if counts is None:
            counts = self.functions[typename] = FunctionCounts()
        return counts

    def route(self, ttype: str, tid: str, caller: tuple[str, str] | None, vtype: str, payload: Any) -> None:
        self.queue.append((ttype, tid, caller, vtype, payload))

    def emit(self, record: EgressMessage) -> None:
        self.counters["egress"] += 1
        self.collector.append(record.typename, 0, -1, [(record.value_type_name, record.payload)])

    def invocation_failed(
        self, typename: str, id: str, caller, vtype: str, payload: Any, exc: BaseException, endpoint: str | None = None
    ) -> None:
        if self.on_error == "raise":
            if self.failure is None:  # raised by the harness once the invocation has ended
                self.failure = (typename, id, caller, vtype, payload, exc)
            return
        self.effects.invocation_failed(typename, id, caller, vtype, payload, exc, endpoint)

    @staticmethod
    def _no_schedule() -> None:
        """The shard arms an event-loop timer here; the harness fires timers when its clock moves."""

    def now_ms(self) -> int:
        return self.clock

    def track_task(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fail(self, reason: str) -> bool:
        raise RayfunError(f"the runtime asked for a rollback, which the harness does not do: {reason}")

    def wake(self) -> None:
        pass

    def park(self, n: int = 1) -> None:
        pass

    def unpark(self, n: int = 1) -> None:
        pass

    def hold_remote(self, n: int = 1) -> None:
        pass

    def release_remote(self, n: int = 1) -> None:
        pass

    def layout_changed(self, typename: str) -> None:
        pass


class Harness:
    """Runs a ``StatefulFunctions`` registry in-process, deterministically, on a virtual clock.

    ``start`` is where the clock starts: a datetime (a naive one is taken as UTC) or milliseconds since the
    epoch; default ``DEFAULT_START``. ``on_error`` is ``"raise"`` (a failing function raises
    ``FunctionError`` out of ``run``/``advance``) or ``"dead_letter"`` (as the runtime does).
    ``endpoints`` exists to refuse remote function types with a clear error (see the module docstring).
    """

    def __init__(
        self,
        functions: StatefulFunctions,
        *,
        start: datetime | int | None = None,
        on_error: Literal["raise", "dead_letter"] = "raise",
        endpoints: Sequence[Any] = (),
    ) -> None:
        if not isinstance(functions, StatefulFunctions):
            raise TypeError(f"Harness() takes a StatefulFunctions, got {type(functions).__name__}")
        if on_error not in ("raise", "dead_letter"):
            raise ValueError(f"on_error must be 'raise' or 'dead_letter', got {on_error!r}")
        if endpoints:
            patterns = [getattr(e, "functions", repr(e)) for e in endpoints]
            raise RayfunError(
                f"rayfun.testing runs embedded functions only; remote function types {patterns} are out of its "
                f"scope (test a remote function through its own SDK, or the whole application with rayfun.start)"
            )
        self._shard = _Shard(functions, _to_ms(DEFAULT_START if start is None else start, "start"), on_error)
        self._runners = {spec.typename: EmbeddedFunction(spec, self._shard) for spec in functions}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: weakref.finalize | None = None
        #: every message a function was invoked with, in order (what ran, from whom, when)
        self.invocations: list[Invocation] = []

    # -- the clock --------------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The virtual time (UTC)."""
        return _to_datetime(self._shard.clock)

    @property
    def now_ms(self) -> int:
        """The virtual time in milliseconds since the epoch (what state expiry and timers compare against)."""
        return self._shard.clock

    # -- in ---------------------------------------------------------------------------------------------

    def send(self, typename: str, id: str, value: Any, value_type: Type | None = None) -> None:
        """Queue a message to ``typename``/``id``, as ``App.send`` (the type is inferred for int, float, str and
        bool). It runs on the next ``run`` or ``advance``."""
        self.send_many([(typename, id, value)], value_type=value_type)

    def send_many(self, records: Iterable[Message | tuple[str, str, Any]], value_type: Type | None = None) -> None:
        """Queue many messages (``Message`` objects or ``(typename, id, value)`` tuples), as ``App.send_many``."""
        registry = self._shard.registry
        rows = []
        for record in records:
            m = to_message(record, value_type)
            if m.target_typename not in registry:
                raise ValueError(f"unknown function type {m.target_typename!r} (bound: {registry.describe()})")
            rows.append((m.target_typename, m.target_id, None, m.value_type_name, m.payload))
        self._shard.queue.extend(rows)

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run every queued message, and what they send, and every delayed message due by now, until nothing
        is left that is due; returns how many invocations ran. Raises ``FunctionError`` (see ``on_error``)."""
        return self._drive(self._shard.clock)

    def advance(self, delta: timedelta | int | None = None, /, **kwargs: float) -> int:
        """Move the clock forward by ``delta`` (a timedelta, or milliseconds) or by timedelta's keywords
        (``advance(days=30)``), running what is queued and every delayed message that falls due on the way,
        each at its own due time, so state expiry is seen exactly as it would be. Returns invocations run."""
        if delta is not None and kwargs:
            raise TypeError("advance() takes a delta or timedelta keywords, not both")
        if delta is None:
            delta = timedelta(**kwargs)
        step = _delta_ms(delta)
        if step < 0:
            raise ValueError(f"the clock only moves forward; advance() got {delta!r}")
        return self._drive(self._shard.clock + step)

    def advance_to(self, when: datetime | int) -> int:
        """Move the clock forward to ``when`` (a datetime or milliseconds since the epoch); see ``advance``."""
        target = _to_ms(when, "when")
        if target < self._shard.clock:
            raise ValueError(f"the clock only moves forward: {_to_datetime(target)} is before {self.now}")
        return self._drive(target)

    def _drive(self, target_ms: int) -> int:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RayfunError(
                "the Harness drives its own event loop (for async functions), so run() and advance() cannot be "
                "called while another loop runs: call them from a plain (non-async) test function"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._closer = weakref.finalize(self, self._loop.close)
        return self._loop.run_until_complete(self._run_until(target_ms))

    async def _run_until(self, target_ms: int) -> int:
        shard = self._shard
        ran = await self._run_due()
        while True:
            due = shard.timers.service.next_due()
            if due is None or due > target_ms:
                break
            shard.clock = max(shard.clock, due)
            ran += await self._run_due()
        shard.clock = target_ms
        for runner in self._runners.values():
            runner.state.expire(target_ms)  # as the shard's sweep: frees expired values (reads hide them)
            runner.state.changed.clear()  # recorded for checkpoints, which the harness does not take
        return ran

    async def _run_due(self) -> int:
        """Run the queue to its end, then what fell due by now (zero-delay messages), until neither is left."""
        shard = self._shard
        ran = 0
        while True:
            while shard.queue:
                await self._invoke(shard.queue.popleft())
                ran += 1
            if not shard.timers.fire_due(shard.clock):
                return ran

    async def _invoke(self, row: tuple) -> None:
        shard = self._shard
        ttype, tid, caller, vtype, payload = row
        self.invocations.append(
            Invocation(
                _to_datetime(shard.clock),
                Address.of(ttype, tid),
                None if caller is None else Address.of(*caller),
                vtype,
                display_value(vtype, payload),
            )
        )
        shard.counters["processed"] += 1
        runner = self._runners.get(ttype)
        if runner is None:  # cannot be queued by send() or a context; kept for the runtime's parity
            shard.effects.unknown_target(*row)
            return
        runner.run([row], 0, 1, shard.clock)
        while shard.tasks:  # an async function: it ends before the next message runs (deterministic order)
            done, _ = await asyncio.wait(set(shard.tasks))
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
        if shard.failure is not None:
            typename, id, caller, vtype, payload, exc = shard.failure
            shard.failure = None
            address = Address.of(typename, id)
            sender = None if caller is None else Address.of(*caller)
            value = display_value(vtype, payload)
            raise FunctionError(
                f"function {typename} (id {id!r}) failed on the message {value!r} ({vtype}) from "
                f"{sender or 'the test'} at {_to_datetime(shard.clock).isoformat()}: {type(exc).__name__}: {exc}",
                address,
                sender,
                vtype,
                value,
            ) from exc

    # -- out --------------------------------------------------------------------------------------------

    def state(self, typename: str, id: str) -> dict[str, Any]:
        """The instance's state now, ``{state name: value}`` (expired values left out; empty: ``{}``), as
        ``App.state``."""
        runner = self._runners.get(typename)
        if runner is None:
            raise ValueError(f"unknown function type {typename!r} (bound: {self._shard.registry.describe()})")
        return runner.state.view(id, self._shard.clock)

    def egress(self, egress_id: str) -> list[Any]:
        """Records emitted so far to an egress, decoded where the type is known, as ``App.egress``.
        ``egress_id`` is the egress typename or, when unambiguous, just its name."""
        collector = self._shard.collector
        if "/" not in egress_id:
            matches = sorted(i for i in collector.egress_ids() if i.rpartition("/")[2] == egress_id)
            if len(matches) > 1:
                raise ValueError(f"egress name {egress_id!r} is ambiguous: {matches}")
            egress_id = matches[0] if matches else egress_id
        return [display_value(vtype, payload) for vtype, payload in collector.records(egress_id)]

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead-letter records so far (``rayfun/dead-letters``: ``reason``, ``function``, ``id``, ...)."""
        return self.egress(DEAD_LETTER_EGRESS)

    @property
    def queued(self) -> int:
        """Messages sent but not run yet."""
        return len(self._shard.queue)

    @property
    def delayed(self) -> int:
        """Delayed messages (``send_after``) pending."""
        return len(self._shard.timers.service)

    @property
    def next_due(self) -> datetime | None:
        """When the next delayed message falls due (None: none pending)."""
        due = self._shard.timers.service.next_due()
        return None if due is None else _to_datetime(due)

    def metrics(self) -> dict[str, int]:
        """Counters as the shards report them: ``processed``, ``dead_letters``, ``egress``, ``timers_fired``."""
        return dict(self._shard.counters)

    # -- lifecycle --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the harness's event loop (also done when the harness is garbage-collected)."""
        if self._closer is not None:
            self._closer()
            self._closer = None
            self._loop = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_ms(when: datetime | int, name: str) -> int:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return _delta_ms(when - datetime(1970, 1, 1, tzinfo=timezone.utc))
    if isinstance(when, int) and not isinstance(when, bool):
        return when
    raise TypeError(f"{name} must be a datetime or milliseconds since the epoch (int), got {when!r}")


def _delta_ms(delta: timedelta | int) -> int:
    if isinstance(delta, timedelta):
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(delta, int) and not isinstance(delta, bool):
        return delta
    raise TypeError(f"a duration must be a timedelta or milliseconds (int), got {delta!r}")


def _to_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
