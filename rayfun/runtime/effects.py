"""Effects: committing what an invocation asked for (sends, delayed sends and cancellations, egress), and
dead letters.

An invocation's effects are validated first and then applied together, so a refused invocation leaves
nothing behind (its message is dead-lettered by the runner). Where the effects go is wired by the shard
core: ``route`` (the outbox), ``timers`` (the timer store) with ``schedule`` (the timer stage), ``emit``
(the egress stage). This stage holds no state of its own, so a rollback has nothing to reset here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..logs import RateLimitedLog
from ..messages import EgressMessage
from .deadletters import dead_letter_record
from .metrics import FunctionCounts
from .registry import TypeRegistry
from .timers import MAX_DUE_MS, InvalidEffect, TimerService, TokenInUseError

log = logging.getLogger("rayfun")

__all__ = ["Effects"]


class Effects:
    """Validates and applies invocation effects; turns failures and strays into dead letters."""

    def __init__(
        self,
        registry: TypeRegistry,
        route: Callable[..., None],
        timers: TimerService,
        schedule: Callable[[], None],
        emit: Callable[[EgressMessage], None],
        counters: dict[str, Any],
        counts_of: Callable[[str], FunctionCounts],
    ) -> None:
        self.registry = registry
        self.route = route
        self.timers = timers
        self.schedule = schedule
        self.emit = emit
        self.counters = counters  # the shard's: "dead_letters"
        self.counts_of = counts_of  # per function type: messages out, egress, dead letters (metrics.py)
        self._log = RateLimitedLog(log)  # hostile input must not flood the log: a line per type per interval

    def apply(
        self,
        typename: str,
        id: str,
        sends: list | None,
        timers: list | None,
        egress: list | None,
        now_ms: int,
        strict: bool = True,
    ) -> None:
        """Commit a successful invocation's sends, timers and egress records (validated first).

        ``strict=False`` (remote answers, already past the function): a message to a function type that
        does not exist is dead-lettered rather than failing the whole answer."""
        if timers:
            self.check_timers(typename, id, timers, now_ms)
        caller = (typename, id)
        if sends or egress:
            counts = self.counts_of(typename)
            counts.messages_out += len(sends) if sends else 0
            counts.egress += len(egress) if egress else 0
        if sends:
            registry, route = self.registry, self.route
            for m in sends:
                if not strict and m.target_typename not in registry:
                    self.dead_letter(
                        f"{typename} (id {id!r}) sent to unknown function type "
                        f"{m.target_typename!r} (bound: {registry.describe()})",
                        function=m.target_typename,
                        id=m.target_id,
                        caller=caller,
                        value_typename=m.value_type_name,
                        payload=m.payload,
                    )
                    continue
                route(m.target_typename, m.target_id, caller, m.value_type_name, m.payload)
        if timers:
            store = self.timers
            for delay_ms, message, token in timers:
                if message is None:
                    store.cancel(typename, id, token)
                else:
                    store.add(
                        now_ms + delay_ms,
                        typename,
                        id,
                        token,
                        message.target_typename,
                        message.target_id,
                        message.value_type_name,
                        message.payload,
                    )
            self.schedule()
        if egress:
            emit = self.emit
            for record in egress:
                emit(record)

    def check_timers(self, typename: str, id: str, timers: list, now_ms: int) -> None:
        """Refuse delayed messages that could never be stored (a due time past a 64-bit millisecond clock)
        and cancellation tokens still in use, before anything of the invocation is applied."""
        pending: dict[str, bool] = {}
        for delay_ms, message, token in timers:
            if message is not None and now_ms + delay_ms > MAX_DUE_MS:
                raise InvalidEffect(
                    f"{typename} (id {id!r}) sent a message to {message.target_typename} with a "
                    f"delay of {delay_ms} ms, past the latest time a timer can hold"
                )
            if not token:
                continue
            live = pending.get(token)
            if live is None:
                live = self.timers.token_pending(typename, id, token)
            if message is None:
                pending[token] = False
            elif live:
                raise TokenInUseError(f"cancellation token {token!r} of {typename}/{id} is still pending")
            else:
                pending[token] = True

    def invocation_failed(
        self, typename: str, id: str, caller, vtype: str, payload: Any, exc: BaseException, endpoint: str | None = None
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.dead_letter(
            f"function {typename} (id {id!r}) failed: {reason}",
            function=typename,
            id=id,
            caller=caller,
            endpoint=endpoint,
            value_typename=vtype,
            payload=payload,
        )

    def unknown_target(self, ttype: str, tid: str, caller, vtype: str, payload: Any) -> None:
        """A mailbox row for a function type this shard has no runner for."""
        self.dead_letter(
            f"unknown function type {ttype!r} (bound: {self.registry.describe()})",
            function=ttype,
            id=tid,
            caller=caller,
            value_typename=vtype,
            payload=payload,
        )

    def dead_letter(self, reason: str, **fields: Any) -> None:
        self.counters["dead_letters"] += 1
        function = fields.get("function")
        if function is not None and (type(function) is not str or function not in self.registry):
            function = None  # not per unknown name (nor a record's garbage): metric series and log keys stay bounded
        if function is not None:
            self.counts_of(function).dead_letters += 1
        self._log.warning(("dead letter", function), "dead letter: %s", reason)
        self.emit(dead_letter_record(reason, **fields))
