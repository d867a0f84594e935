"""Effects: an invocation's sends, timers and egress are validated first, then applied together."""

import pytest

from rayfun import StatefulFunctions
from rayfun.io import DEAD_LETTER_EGRESS
from rayfun.messages import EgressMessage, Message
from rayfun.runtime.effects import Effects
from rayfun.runtime.metrics import FunctionCounts
from rayfun.runtime.registry import TypeRegistry
from rayfun.runtime.timers import InvalidEffect, TimerService, TokenInUseError


class _Wiring:
    def __init__(self) -> None:
        functions = StatefulFunctions()

        @functions.bind("t/f")
        def f(context, message):
            pass

        self.routed: list[tuple] = []
        self.emitted: list[EgressMessage] = []
        self.scheduled = 0
        self.timers = TimerService()
        self.counters = {"dead_letters": 0}
        self.counts: dict = {}
        self.effects = Effects(
            TypeRegistry(functions.typenames, []),
            lambda *row: self.routed.append(row),
            self.timers,
            self._schedule,
            self.emitted.append,
            self.counters,
            lambda typename: self.counts.setdefault(typename, FunctionCounts()),
        )

    def _schedule(self) -> None:
        self.scheduled += 1


def _msg(id: str = "b", typename: str = "t/f") -> Message:
    return Message(typename, id, "int", 1)


def test_sends_timers_and_egress_are_applied():
    w = _Wiring()
    record = EgressMessage("e/out", "int", 5)
    w.effects.apply("t/f", "a", [_msg()], [(100, _msg("later"), "tok")], [record], 1_000)
    assert w.routed == [("t/f", "b", ("t/f", "a"), "int", 1)]
    assert [(t.due_ms, t.target_id, t.token) for t in w.timers.all()] == [(1_100, "later", "tok")]
    assert w.scheduled == 1 and w.emitted == [record]
    w.effects.apply("t/f", "a", None, [(0, None, "tok")], None, 2_000)  # a cancellation
    assert len(w.timers) == 0


def test_a_bad_timer_refuses_the_whole_invocation_before_anything_is_applied():
    w = _Wiring()
    with pytest.raises(InvalidEffect, match="past the latest time a timer can hold"):
        w.effects.apply("t/f", "a", [_msg()], [(2**63 - 1, _msg(), "")], [EgressMessage("e", "int", 1)], 1_000)
    w.effects.apply("t/f", "a", None, [(10, _msg(), "tok")], None, 1_000)
    with pytest.raises(TokenInUseError):
        w.effects.apply("t/f", "a", [_msg()], [(10, _msg(), "tok")], None, 1_000)
    # a cancellation then a new timer under the same token, in one invocation: allowed
    w.effects.apply("t/f", "a", None, [(0, None, "tok"), (20, _msg("again"), "tok")], None, 1_000)
    assert w.routed == [] and w.emitted == [] and [t.target_id for t in w.timers.all()] == ["again"]


def test_unknown_targets_and_failed_invocations_become_dead_letters():
    w = _Wiring()
    w.effects.apply("t/f", "a", [_msg(typename="t/nope"), _msg()], None, None, 1_000, strict=False)
    assert w.routed == [("t/f", "b", ("t/f", "a"), "int", 1)]
    w.effects.unknown_target("t/gone", "x", None, "int", 2)
    w.effects.invocation_failed("t/f", "y", ("t/f", "a"), "int", 3, ValueError("boom"))
    assert w.counters["dead_letters"] == 3
    assert [r.typename for r in w.emitted] == [DEAD_LETTER_EGRESS] * 3
