"""A seeded workload modelled on StateFun's smoke test, for proving exactly-once under failures.

A generator produces "command trees" for N interpreter instances; the interpreter runs them: increment its
counter, send nested commands to another instance (cycles included), send them after a delay (some with
a cancellation token, cancelled at once: their increment must never land), emit an egress record with a
unique label, and write a scratch state that expires soon after (and, optionally, tally each increment in
a single-value function, which runs on the slot runner). The generator also computes what the
final state and the egress multiset must be, so a run with failures can be checked exactly.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import timedelta

from rayfun import (
    IntType,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)

FN = "chaos/interpreter"
TALLY = "chaos/tally"  # with tally=True: one int value, so it runs on the slot runner
EGRESS = "chaos/out"
Commands = make_json_type("chaos/Commands")
#: every scratch value expires this long after its write (the interpreters' ``ValueSpec("scratch", ...)``)
SCRATCH_TTL = timedelta(milliseconds=50)


def let_scratch_expire() -> None:
    """Wait until every scratch value written before the application went idle has expired, before its
    states are read: the last message (a delayed one, often) may land a few ms before the idle verdict, and
    a read within the TTL would see its scratch, rightly (measured: 26 ms between the two). A value that
    outlives this wait never expired, which the check is there to catch."""
    time.sleep(4 * SCRATCH_TTL.total_seconds())


def build_functions(tally: bool = False) -> StatefulFunctions:
    """The interpreter; with ``tally``, each increment also sends 1 to ``TALLY`` at the same id, whose one
    int state (the slot runner's kind of function) must end equal to the interpreter's count."""
    functions = StatefulFunctions()

    if tally:

        @functions.bind(TALLY, specs=[ValueSpec("total", IntType)])
        def count_up(context, message):
            context.storage.total = (context.storage.total or 0) + message.as_int()

    @functions.bind(
        FN,
        specs=[
            ValueSpec("count", IntType),
            ValueSpec("scratch", IntType, expire_after_write=SCRATCH_TTL),
        ],
    )
    def interpreter(context, message):
        for command in message.as_type(Commands):
            kind = command[0]
            if kind == "inc":
                context.storage.count = (context.storage.count or 0) + 1
                context.storage.scratch = 1
                if tally:
                    context.send(message_builder(TALLY, context.address.id, int_value=1))
            elif kind == "send":
                context.send(message_builder(FN, str(command[1]), value=command[2], value_type=Commands))
            elif kind == "after":
                context.send_after(
                    timedelta(milliseconds=command[3]),
                    message_builder(FN, str(command[1]), value=command[2], value_type=Commands),
                )
            elif kind == "cancelled":  # a delayed increment that is cancelled right away: it must never land
                token = command[2]
                context.send_after(
                    timedelta(milliseconds=200),
                    message_builder(FN, str(command[1]), value=[["inc"]], value_type=Commands),
                    cancellation_token=token,
                )
                context.cancel_delayed_message(token)
            elif kind == "egress":
                context.send_egress(egress_message_builder(EGRESS, command[1], StringType))

    return functions


class Generator:
    """Deterministic command trees plus the expected outcome (increments per instance, egress labels)."""

    def __init__(self, seed: int, instances: int, messages: int, depth: int = 4):
        self.rng = random.Random(seed)
        self.instances, self.depth = instances, depth
        self.expected = [0] * instances
        self.egress: Counter = Counter()
        self._labels = 0
        self.records = [(FN, str(target), commands) for target, commands in (self._root() for _ in range(messages))]

    def _root(self):
        target = self.rng.randrange(self.instances)
        return target, self._commands(target, self.rng.randrange(self.depth + 1))

    def _commands(self, current: int, depth: int) -> list:
        out = []
        if depth > 0:
            for _ in range(self.rng.randint(1, 3)):
                roll = self.rng.random()
                if roll < 0.35:
                    out.append(["inc"])
                    self.expected[current] += 1
                elif roll < 0.7:
                    target = self.rng.randrange(self.instances)
                    out.append(["send", target, self._commands(target, depth - 1)])
                elif roll < 0.8:
                    target = self.rng.randrange(self.instances)
                    out.append(["after", target, self._commands(target, depth - 1), self.rng.randint(1, 40)])
                elif roll < 0.88:
                    self._labels += 1
                    out.append(["cancelled", self.rng.randrange(self.instances), f"tok-{self._labels}"])
                else:
                    self._labels += 1
                    label = f"e{self._labels}"
                    out.append(["egress", label])
                    self.egress[label] += 1
        if not out:
            out.append(["inc"])
            self.expected[current] += 1
        return out
