"""``ColumnState``: the slot runner's state held by column, and the checkpoints taken from it.

A seeded random walk writes, deletes and re-creates instances (through the slot runner's own operations
and through the dict views the other paths use), cuts at random points (deltas and full bases), and
squeezes out holes once deletions pile up. At every cut the encoded checkpoint chain, folded as a restore
folds it, must be exactly the live state of a plain dict model, and the changes taken must be exactly
the model's changes since the previous cut.
"""

from __future__ import annotations

import os
import random

import pytest

from rayfun import BoolType, IntType, LongType, StringType, ValueSpec
from rayfun.checkpoint.state_codec import StateDelta, StateLayout, decode_instances, encode_state, fold_layers
from rayfun.runtime.runners.state import ColumnState

SEED = int(os.environ.get("RAYFUN_TEST_SEED", 20261207))
KINDS = {
    "int": (IntType, lambda rng: rng.randrange(-(2**31), 2**31)),
    "long": (LongType, lambda rng: rng.randrange(-(2**63), 2**63)),
    "str": (StringType, lambda rng: rng.choice(["", "a", "h\u00e9llo", "x" * rng.randrange(50)])),
    "bool": (BoolType, lambda rng: rng.random() < 0.5),
}


def runner_write(state: ColumnState, id: str, value) -> None:
    """What the slot runner does for a write (rayfun/runtime/runners/embedded.py)."""
    slot = state.slots.get(id)
    if slot is None:
        slot = state.new_slot(id)
    state.values[slot] = value
    state.dirty[slot] = 1


def folded(layers: list, layout: StateLayout) -> dict:
    return decode_instances(fold_layers(layers), layout, values=True)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", [SEED, 1, 2])
def test_checkpoints_of_column_state_fold_to_the_live_state(kind, seed):
    print(f"seed {seed} (RAYFUN_TEST_SEED), {kind}")
    rng = random.Random(seed)
    t, value_of = KINDS[kind]
    spec = ValueSpec("v", t)
    state = ColumnState(f"t/{kind}", [spec])
    layout = StateLayout.of(f"t/{kind}", [spec])
    model: dict = {}
    changes: dict = {}  # the model's changes since the last cut (None: gone)
    layers: list = []
    squeezed = 0
    for step in range(60):
        burst = rng.random() < 0.15  # create and delete thousands: holes pile up until a cut squeezes them
        ids = [f"b{step}-{k}" for k in range(2500)] if burst else None
        for _ in range(rng.randrange(1, 400)):
            id = f"i{rng.randrange(300)}"
            op = rng.random()
            if op < 0.45:
                value = value_of(rng)
                runner_write(state, id, value)
                model[id] = changes[id] = value
            elif op < 0.6:  # the general runner's path: through the views
                value = value_of(rng)
                state.instances[id] = state.changed[id] = value
                model[id] = changes[id] = value
            elif op < 0.8:
                state.delete(id)
                model.pop(id, None)
                changes[id] = None
            else:
                assert state.instances.get(id) == model.get(id)
        if ids:
            for id in ids:
                runner_write(state, id, value_of(rng))
            for id in ids:
                state.delete(id)
                changes[id] = None
        assert dict(state.instances) == model and len(state.instances) == len(model)
        assert dict(state.changed) == changes
        if rng.random() < 0.4:
            holes = state.holes
            full = rng.random() < 0.2 or not layers
            captured = state.capture_all() if full and layers else state.take_changes()
            if full and layers:
                assert dict(captured) == model
                state.take_changes()  # the cut takes the changes as well
            else:
                assert dict(captured) == changes and len(captured) == len(changes)
            squeezed += state.holes < holes
            table = encode_state([StateDelta(layout, captured, values=True)], None)
            layers = [table] if full else [*layers, table]
            assert folded(layers, layout) == model, f"step {step} (seed {seed})"
            changes = {}
            assert not state.changed and len(state.changed) == 0
    assert squeezed, "no cut squeezed the holes out: the test missed that path"
    assert state.slots == {id: slot for slot, id in enumerate(state.ids) if id is not None}


def test_changed_view_records_as_the_dict_does():
    state = ColumnState("t/n", [ValueSpec("n", IntType)])
    state.instances["a"] = state.changed["a"] = 1
    state.instances["b"] = 2  # written without a change recorded (as a restore writes)
    assert dict(state.changed) == {"a": 1} and "b" not in state.changed
    state.delete("a")
    assert dict(state.changed) == {"a": None} and "a" not in state.instances
    runner_write(state, "a", 5)  # created again before the cut: its value replaces the tombstone
    assert dict(state.changed) == {"a": 5}
    del state.changed["a"]
    assert not state.changed
    taken = state.take_changes()
    assert len(taken) == 0 and dict(taken) == {}
    assert dict(state.instances) == {"a": 5, "b": 2}


def test_bulk_load_into_empty_and_live_state():
    state = ColumnState("t/n", [ValueSpec("n", LongType)])
    state.instances.update({str(i): i * 3 for i in range(1000)})
    assert len(state.instances) == 1000 and state.instances["999"] == 2997 and not state.changed
    state.instances.update({"5": -1, "new": 7})  # not empty: one at a time, existing slots kept
    assert state.instances["5"] == -1 and state.instances["new"] == 7 and len(state.ids) == 1001
    full = state.capture_all()
    assert len(full) == 1001 and dict(full) == dict(state.instances)
    state.instances.clear()
    assert not state.instances and not state.ids and not state.changed


def test_column_state_refuses_types_it_cannot_hold():
    from rayfun import FloatType

    with pytest.raises(ValueError, match="one non-expiring value"):
        ColumnState("t/f", [ValueSpec("f", FloatType)])
    with pytest.raises(ValueError, match="one non-expiring value"):
        ColumnState("t/two", [ValueSpec("a", IntType), ValueSpec("b", IntType)])


def test_churn_without_checkpoints_stays_bounded():
    """Instances created and deleted over and over, where nothing checkpoints (the shard's housekeeping
    only clears the recorded changes): the holes are squeezed out, the columns do not grow."""
    state = ColumnState("t/n", [ValueSpec("n", IntType)])
    runner_write(state, "kept", 1)
    for round in range(20):
        for k in range(3000):
            runner_write(state, f"r{round}-{k}", k)
        for k in range(3000):
            state.delete(f"r{round}-{k}")
        state.changed.clear()  # what ShardCore._housekeeping does without a checkpoint store
    assert len(state.ids) < 3 * 4096 and dict(state.instances) == {"kept": 1}
    assert state.slots == {"kept": state.ids.index("kept")}


def test_big_values_are_encoded_a_piece_at_a_time(monkeypatch):
    """Column-held changes go through the encoder's memory bound too: big values are converted and
    written a piece at a time, never all in Arrow at once, and the pieces fold to the state."""
    from rayfun.checkpoint import state_codec

    monkeypatch.setattr(state_codec, "PIECE_BYTES", 64 * 1024)
    state = ColumnState("t/text", [ValueSpec("s", StringType)])
    model = {}
    for k in range(300):
        model[f"i{k}"] = f"{k}:" + "x" * 2000
        runner_write(state, f"i{k}", model[f"i{k}"])
    pieces = list(
        state_codec.iter_state(
            [StateDelta(StateLayout.of("t/text", state.specs), state.take_changes(), values=True)], None
        )
    )
    assert len(pieces) >= 5 and max(p.nbytes for p in pieces) < 4 * 64 * 1024
    assert folded(pieces, StateLayout.of("t/text", state.specs)) == model
