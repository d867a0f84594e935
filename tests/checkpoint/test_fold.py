"""The fold of a chain of state layers (a base and its deltas): per instance, the rows of the newest layer
that holds it survive, tombstones hide it. Checked against a plain-Python fold on seeded random chains
whose shapes walk every path: one layer, a big base under one or several small deltas (the hash-set
probe), a small base under big deltas (numbering every id), several values per instance, mixed types."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pytest

from rayfun.checkpoint.state_codec import fold_masks


def _layer(rng: random.Random, ids: list[str], types: list[str]) -> pa.Table:
    rows = []
    for id in ids:
        ft = rng.choice(types)
        deleted = rng.random() < 0.1
        for _ in range(1 if deleted else rng.choice([1, 1, 2, 3])):  # an instance has a row per value
            rows.append((ft, id, deleted))
    rng.shuffle(rows)  # a layer's rows come in no particular order
    ft, ids_, deleted = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    return pa.table(
        {"function_type": pa.array(ft, pa.string()), "id": pa.array(ids_, pa.string()), "deleted": deleted},
        schema=pa.schema([("function_type", pa.string()), ("id", pa.string()), ("deleted", pa.bool_())]),
    )


def _reference(layers: list[pa.Table]) -> list[list[bool]]:
    newest: dict[tuple[str, str], int] = {}
    for i, t in enumerate(layers):  # oldest first: a later layer wins
        for ft, id in zip(t["function_type"].to_pylist(), t["id"].to_pylist()):
            newest[(ft, id)] = i
    return [
        [newest[(ft, id)] == i and not d for ft, id, d in zip(*(t[c].to_pylist() for c in t.column_names))]
        for i, t in enumerate(layers)
    ]


@pytest.mark.parametrize("shape", ["big-base", "small-base", "mixed"])
def test_the_fold_keeps_each_instances_newest_rows(shape):
    seed = int(os.environ.get("RAYFUN_TEST_SEED", random.randrange(1 << 30)))
    print(f"RAYFUN_TEST_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(40):
        universe = [f"id-{i}" for i in range(rng.choice([5, 50, 400]))]
        types = ["ex/a"] if rng.random() < 0.5 else ["ex/a", "ex/b"]
        depth = rng.choice([1, 2, 2, 3, 5])
        layers = []
        for i in range(depth):
            if shape == "big-base":
                share = 1.0 if i == 0 else 0.1
            elif shape == "small-base":
                share = 0.1 if i == 0 else 0.8
            else:
                share = rng.random()
            layers.append(_layer(rng, rng.sample(universe, max(0, int(share * len(universe)))), types))
        masks = fold_masks(layers)
        got = [[True] * t.num_rows if m is None else m.to_pylist() for t, m in zip(layers, masks)]
        assert got == _reference(layers), [t.num_rows for t in layers]
