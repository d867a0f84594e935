"""Shard-to-shard batches by column: whatever the rows hold (ids with the separator in them, empty ids,
mixed types and callers, any payload), the rows that arrive are the rows that left, in order."""

from __future__ import annotations

import os
import random

import pytest

from rayfun.runtime.batchcodec import _SEPARATOR, decode_rows, encode_rows

PAYLOADS = [0, -1, 2**70, 1.5, "", "text", b"", b"\x00\x1f", True, None]


def _random_rows(rng: random.Random, n: int) -> list[tuple]:
    rows = []
    for _ in range(n):
        tid = rng.choice(["", "a", _SEPARATOR, f"x{_SEPARATOR}y", "é" * 3, str(rng.randrange(10**6))])
        caller = rng.choice([None, ("ex/caller", "1"), ("ex/caller", _SEPARATOR)])
        rows.append((rng.choice(["ex/a", "ex/b"]), tid, caller, rng.choice(["v/1", "v/2"]), rng.choice(PAYLOADS)))
    return rows


def test_random_batches_arrive_as_they_left():
    seed = int(os.environ.get("RAYFUN_TEST_SEED", random.randrange(1 << 30)))
    print(f"RAYFUN_TEST_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(300):
        rows = _random_rows(rng, rng.choice([1, 2, 3, 50]))
        assert decode_rows(encode_rows(rows)) == rows


@pytest.mark.parametrize(
    "rows",
    [
        [],  # nothing (the driver's channel may send an empty batch)
        [("ex/a", "", None, "v", 1)],  # one empty id
        [("ex/a", "", None, "v", 1), ("ex/a", "", None, "v", 2)],  # empty ids joined: one separator
        [("ex/a", _SEPARATOR, None, "v", 1)],  # an id that is the separator
        [("ex/a", "1", None, "v", 1), ("ex/a", f"2{_SEPARATOR}", None, "v", 2)],
        [("ex/a", "1", ("ex/c", "9"), "v", 1), ("ex/a", "2", ("ex/c", "9"), "v", 2)],  # one caller for all
        [("ex/a", "1", ("ex/c", "9"), "v", 1), ("ex/b", "2", None, "w", [1, 2])],  # every column varies
    ],
)
def test_edge_batches_arrive_as_they_left(rows):
    assert decode_rows(encode_rows(rows)) == rows


def test_a_uniform_batch_is_smaller_than_its_rows_pickled():
    import pickle

    ids = [str(i) for i in range(10_000)]
    rows = [("bench/counter", ids[i * 7 % 10_000], None, "io.statefun.types/int", i % 7 + 1) for i in range(8000)]
    assert len(encode_rows(rows)) < 0.6 * len(pickle.dumps(rows, protocol=5))
