"""The slot runner (one built-in, non-expiring state value: ``SlotStorage``) against the general runner.

The slot runner checks a value only once the function returns and runs anything unusual again on the
general runner, so the two must agree on every outcome: state, what changed for the next checkpoint,
messages sent, egress records, timers, dead letters and their reasons, invocation counts. A seeded random
script of writes (valid, of the wrong type, out of range, None, non-UTF-8 text), deletes (twice, too),
reads after a delete, undeclared names, raises and effects runs through both, in batches that mix types
and repeat ids, and each outcome is compared.
"""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta

import pytest

from rayfun import (
    BoolType,
    IntType,
    LongType,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    message_builder,
)
from rayfun.context import SlotStorage, StorageBase
from rayfun.runtime.runners import embedded
from rayfun.runtime.runners.embedded import EmbeddedFunction
from rayfun.testing import _Shard

TYPES = {"int": IntType, "long": LongType, "str": StringType, "bool": BoolType}  # the slot runner's types

# values a function may write, of every type: valid for some state types, wrong for the others
VALUES = [
    0,
    1,
    -5,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    2**63,
    True,
    False,
    1.5,
    -0.0,
    "",
    "abc",
    "h\u00e9llo",
    "\ud800",
    b"bytes",
    [1],
]  # fmt: skip  (None: see test_the_slot_runners_documented_leniency)


def valid(t, value) -> bool:
    """Whether the general storage takes ``value`` as it is."""
    try:
        return t.check(value) is value
    except (TypeError, ValueError):
        return False


def script(rng: random.Random, t) -> str:
    """A random invocation of a function with state type ``t``: steps separated by ';' (``w<k>``: write
    VALUES[k]; ``d``: del; ``r``: read into an egress; ``u``: an undeclared name; ``x``: raise; ``s``,
    ``e``, ``t``/``tt``: a message, an egress record, one or two delayed messages with one token). After
    a wrong value, no step reads, writes or deletes the value: the slot runner checks the value the
    function leaves, not each write (see ``test_the_slot_runners_documented_leniency``)."""
    steps: list[str] = []
    wrong = False
    for _ in range(rng.randint(0, 4)):
        op = rng.choice(["w", "w", "w", "d", "r", "u", "x", "s", "e", "t", "tt"])
        if wrong and op in ("w", "d", "r"):
            op = rng.choice(["u", "x", "s", "e", "t"])
        if op == "w":
            k = rng.randrange(len(VALUES))
            wrong = not valid(t, VALUES[k])
            op = f"w{k}"
        steps.append(op)
    return ";".join(steps)


def build(seen: list) -> StatefulFunctions:
    functions = StatefulFunctions()
    for name, t in TYPES.items():
        functions.bind(f"t/{name}", specs=[ValueSpec("v", t)])(scripted(name, seen))
    return functions


def scripted(name: str, seen: list):
    def body(context, message):
        seen.append(type(context.storage))
        storage = context.storage
        for step in message.as_string().split(";"):
            if not step:
                continue
            if step == "none":
                storage.v = None
            elif step[0] == "w":
                storage.v = VALUES[int(step[1:])]
            elif step == "d":
                del storage.v
            elif step == "r":
                context.send_egress(egress_message_builder("t/read", repr(storage.v), StringType))
            elif step == "u":
                storage.nope = 1
            elif step == "x":
                raise RuntimeError(f"boom in {name}")
            elif step == "s":
                context.send(message_builder(f"t/{name}", "peer", str_value="w1"))
            elif step == "e":
                context.send_egress(egress_message_builder("t/out", f"{name}:{context.address.id}", StringType))
            elif step[0] == "t":  # "tt": the same token twice, which fails when the effects are applied
                for _ in step:
                    context.send_after(timedelta(seconds=1), message_builder(f"t/{name}", "x", str_value=""), "tok")
            else:
                raise AssertionError(f"unknown step {step!r}")

    return body


def outcome(shard: _Shard, runners: dict) -> dict:
    def same(v):  # True and 1 are equal in Python, not in state
        return (type(v).__name__, v)

    return {
        "state": {t: {id: [same(c) for c in cells] for id, cells in r.state.cell_items()} for t, r in runners.items()},
        "queue": list(shard.queue),
        "timers": len(shard.timers),
        "egress": {e: list(shard.collector.records(e)) for e in sorted(shard.collector.egress_ids())},
        "invocations": {t: c.invocations for t, c in shard.functions.items()},
    }


def fold_changes(checkpointed: dict[str, dict], runners: dict) -> None:
    """Take the changes recorded since the last cut, as a checkpoint does, and fold them onto the last."""
    for t, runner in runners.items():
        for id, value in runner.state.take_changes().items():
            if value is None:
                checkpointed[t].pop(id, None)
            else:
                checkpointed[t][id] = value


def run_both(seed: int, batches: int = 40) -> tuple[dict, dict, list, list]:
    rng = random.Random(seed)
    ids = [f"id{k}" for k in range(6)]
    rows_per_batch = []
    for _ in range(batches):
        rows = []
        for _ in range(rng.randint(1, 30)):
            name = rng.choice(list(TYPES))
            rows.append((f"t/{name}", rng.choice(ids), None, StringType.typename, script(rng, TYPES[name])))
        rows_per_batch.append(rows)
    takes = [rng.random() < 0.3 for _ in rows_per_batch]  # where a checkpoint's cut takes the changes
    results, seen_by = [], []
    for slots in (True, False):
        seen: list = []
        shard = _Shard(build(seen), 1_000, on_error="dead_letter")
        runners = {}
        for spec in build(seen):
            if not slots:  # the reference: the general runner over a dict of instances
                original = embedded.slot_eligible
                embedded.slot_eligible = lambda specs: False  # type: ignore[assignment]
            try:
                runners[spec.typename] = EmbeddedFunction(spec, shard)
            finally:
                if not slots:
                    embedded.slot_eligible = original  # type: ignore[assignment]
        checkpointed: dict[str, dict] = {t: {} for t in runners}
        for k, rows in enumerate(rows_per_batch):
            rows = sorted(rows, key=lambda r: r[0]) if k % 2 else rows  # long runs of one type too
            i = 0
            while i < len(rows):
                i = runners[rows[i][0]].run(rows, i, len(rows), shard.clock)
            if takes[k]:
                fold_changes(checkpointed, runners)
        fold_changes(checkpointed, runners)
        # the deltas, folded as a restore folds them, are the live state: what checkpoints rely on
        assert checkpointed == {t: {id: c[0] for id, c in r.state.cell_items()} for t, r in runners.items()}
        results.append(outcome(shard, runners))
        seen_by.append(seen)
    return results[0], results[1], seen_by[0], seen_by[1]


@pytest.mark.parametrize("seed", [int(os.environ.get("RAYFUN_TEST_SEED", 20261206)), 1, 2, 3])
def test_slot_runner_agrees_with_the_general_runner(seed):
    print(f"seed {seed} (RAYFUN_TEST_SEED)")
    fast, exact, fast_seen, exact_seen = run_both(seed)
    # the slot runner really ran (and the reference did not)
    assert any(issubclass(t, SlotStorage) for t in fast_seen)
    assert all(issubclass(t, StorageBase) for t in exact_seen)
    assert sum(map(len, exact["egress"].values())) > 0
    assert any(exact["state"].values()) and exact["queue"]
    for key in exact:
        assert fast[key] == exact[key], f"{key} differs (seed {seed})"


def test_slot_runner_dead_letters_as_the_general_runner():
    """The reasons users read: a wrong type, a value out of range and an undeclared name, as the general
    storage raises them at the write."""
    fast, exact, _, _ = run_both(7, batches=60)
    letters = exact["egress"].get("rayfun/dead-letters", [])
    reasons = " ".join(json.loads(payload)["reason"] for _, payload in letters)
    assert "expects" in reasons and "out of range" in reasons and "has no state named 'nope'" in reasons
    assert fast["egress"] == exact["egress"]


def test_the_slot_runners_documented_leniency():
    """It checks the value a function leaves: a wrong value overwritten before the function returns, and
    None written over an absent value, are no errors there (nothing wrong is stored either way); None over
    a value is refused as the general storage refuses it."""
    seen: list = []
    shard = _Shard(build(seen), 1_000, on_error="dead_letter")
    runner = EmbeddedFunction(next(s for s in build(seen) if s.typename == "t/int"), shard)
    wrong_then_right = f"w{VALUES.index('abc')};w{VALUES.index(-5)}"
    rows = [
        ("t/int", "a", None, StringType.typename, wrong_then_right),
        ("t/int", "b", None, StringType.typename, "none;e"),
        ("t/int", "a", None, StringType.typename, "none;e"),
    ]
    assert runner.run(rows, 0, 3, 0) == 3
    assert dict(runner.state.cell_items()) == {"a": [-5]}
    assert shard.collector.records("t/out") == [(StringType.typename, "int:b")]
    (letter,) = shard.collector.records("rayfun/dead-letters")
    letter = json.loads(letter[1])
    assert letter["id"] == "a" and "cannot set state 'v' of t/int to None; use del" in letter["reason"]
